//! Bookkeeping of the AI's function calls (realtime spec §8.2), sans-IO: results go back as
//! `function_call_output` items only once the response that asked for them is done, all the
//! outputs of one response together, followed by a single `response.create`, sent only while no
//! response is active. A failed response ends its tool chain.

/// What to send to the AI now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Send {
    /// `(call_id, output)` pairs for `function_call_output` items.
    pub outputs: Vec<(String, String)>,
    /// Whether to follow them with `response.create`.
    pub create_response: bool,
}

impl Send {
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && !self.create_response
    }
}

#[derive(Debug)]
struct Batch {
    response_id: String,
    outstanding: usize,
    outputs: Vec<(String, String)>,
    response_done: bool,
    failed: bool,
}

#[derive(Debug, Default)]
pub struct ToolCalls {
    batches: Vec<Batch>,
    active_response: Option<String>,
    /// Outputs were sent while a response was active: `response.create` waits for its end.
    create_pending: bool,
}

impl ToolCalls {
    pub fn new() -> Self {
        Self::default()
    }

    fn batch(&mut self, response_id: &str) -> &mut Batch {
        if let Some(index) = self
            .batches
            .iter()
            .position(|b| b.response_id == response_id)
        {
            return &mut self.batches[index];
        }
        self.batches.push(Batch {
            response_id: response_id.to_owned(),
            outstanding: 0,
            outputs: Vec::new(),
            response_done: false,
            failed: false,
        });
        self.batches.last_mut().expect("just pushed")
    }

    /// The model asked for a function call within `response_id`; its tool now runs.
    pub fn call_started(&mut self, response_id: &str) {
        self.batch(response_id).outstanding += 1;
    }

    pub fn response_created(&mut self, response_id: &str) {
        self.active_response = Some(response_id.to_owned());
    }

    /// `response.done` with its status.
    pub fn response_done(&mut self, response_id: &str, status: &str) -> Send {
        if self.active_response.as_deref() == Some(response_id) {
            self.active_response = None;
        }
        if let Some(batch) = self
            .batches
            .iter_mut()
            .find(|b| b.response_id == response_id)
        {
            batch.response_done = true;
            batch.failed = status == "failed";
        }
        self.ready()
    }

    /// A tool finished.
    pub fn tool_finished(&mut self, response_id: &str, call_id: &str, output: String) -> Send {
        let batch = self.batch(response_id);
        batch.outstanding = batch.outstanding.saturating_sub(1);
        batch.outputs.push((call_id.to_owned(), output));
        self.ready()
    }

    fn ready(&mut self) -> Send {
        let mut send = Send::default();
        let mut index = 0;
        while index < self.batches.len() {
            let batch = &self.batches[index];
            if batch.outstanding == 0 && batch.response_done {
                let batch = self.batches.remove(index);
                if batch.failed {
                    tracing::debug!(response_id = %batch.response_id, "failed response: tool chain dropped");
                    continue;
                }
                send.outputs.extend(batch.outputs);
                self.create_pending = true;
            } else {
                index += 1;
            }
        }
        if self.create_pending && self.active_response.is_none() {
            self.create_pending = false;
            send.create_response = true;
        }
        send
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_wait_for_the_response_to_be_done_then_one_create_follows() {
        let mut calls = ToolCalls::new();
        calls.response_created("resp_1");
        calls.call_started("resp_1");
        calls.call_started("resp_1");
        assert!(
            calls
                .tool_finished("resp_1", "call_a", "A".into())
                .is_empty()
        );
        assert!(
            calls
                .tool_finished("resp_1", "call_b", "B".into())
                .is_empty()
        );
        let send = calls.response_done("resp_1", "completed");
        assert_eq!(
            send.outputs,
            vec![("call_a".into(), "A".into()), ("call_b".into(), "B".into())]
        );
        assert!(send.create_response);
    }

    #[test]
    fn a_slow_tool_is_sent_when_it_finishes_after_the_response() {
        let mut calls = ToolCalls::new();
        calls.response_created("resp_1");
        calls.call_started("resp_1");
        assert!(calls.response_done("resp_1", "completed").is_empty());
        let send = calls.tool_finished("resp_1", "call_a", "A".into());
        assert_eq!(send.outputs.len(), 1);
        assert!(send.create_response);
    }

    #[test]
    fn response_create_waits_while_another_response_is_active() {
        let mut calls = ToolCalls::new();
        calls.response_created("resp_1");
        calls.call_started("resp_1");
        calls.response_done("resp_1", "completed");
        // The caller barged in: VAD started a new response before the tool finished.
        calls.response_created("resp_2");
        let send = calls.tool_finished("resp_1", "call_a", "A".into());
        assert_eq!(send.outputs.len(), 1);
        assert!(!send.create_response);
        let send = calls.response_done("resp_2", "completed");
        assert!(send.outputs.is_empty());
        assert!(send.create_response);
    }

    #[test]
    fn a_failed_response_ends_its_tool_chain() {
        let mut calls = ToolCalls::new();
        calls.response_created("resp_1");
        calls.call_started("resp_1");
        calls.tool_finished("resp_1", "call_a", "A".into());
        assert!(calls.response_done("resp_1", "failed").is_empty());
    }
}
