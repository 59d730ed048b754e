//! (placeholder until helper D lands)
#[derive(Clone)]
pub enum Provider {
    OpenAi { url: String, model: String, api_key: secrecy::SecretString },
    Azure { endpoint: String, deployment: String, api_key: secrecy::SecretString },
}
