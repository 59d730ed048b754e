//! One call from a Chromium page: its offer in a signed `connect`, the bridge's answer (from the
//! Graph double's `pre_accept`) applied in the page, the greeting heard out, the caller's turn,
//! the same words again as the answer, then Meta's `terminate`.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::chromium::Chromium;
use super::offer;
use super::page::{PageResult, PageServer};
use crate::graph_double::GraphDouble;
use crate::phone::{post_webhook, unix_now};
use crate::webhooks::{self, BusinessLine};
use bridge::ids::{CallId, PhoneNumber};

/// How long the bridge may take to answer (`pre_accept`) and accept.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a rendition of the clip may take to start and play out.
const SPEECH_TIMEOUT: Duration = Duration::from_secs(30);
/// The caller's turn: long enough for the AI double's VAD to take it as speech.
const CALLER_TURN_MS: u64 = 600;
/// Recorded after a rendition's expected end, so a stretched one is still whole.
const TAIL_SECONDS: f64 = 1.0;

/// Where the calls go and what they say.
pub struct Line<'a> {
    pub bridge_url: &'a str,
    pub app_secret: &'a str,
    pub graph: &'a GraphDouble,
    pub http: &'a reqwest::Client,
    pub chromium: &'a Chromium,
    pub pages: &'a PageServer,
    /// Length of the AI's clip, in seconds.
    pub clip_seconds: f64,
}

/// What one call brought back.
pub struct CallRecord {
    pub key: u64,
    pub page: PageResult,
    /// Onsets of the greeting and of the later rendition as the page detected them (frames of
    /// the recording); the scorer aligns them precisely.
    pub onsets: [u64; 2],
    /// `connect` webhook sent → `accept` answered by the Graph double.
    pub setup: Duration,
    /// Frames the bridge sent more than 10 ms after their slot while the call ran (any call's,
    /// with several at once); `None` when its metrics could not be read.
    pub bridge_sent_late: Option<u64>,
}

pub async fn place(line: &Line<'_>, key: u64) -> anyhow::Result<CallRecord> {
    let page = line.pages.open(line.chromium, &key.to_string()).await?;
    let result = converse(line, key, &page).await;
    page.close().await;
    result
}

async fn converse(
    line: &Line<'_>,
    key: u64,
    page: &super::page::CallerPage,
) -> anyhow::Result<CallRecord> {
    let call_id = CallId::new(format!("wacid.BROWSER{key}-{:08x}", rand::random::<u32>()));
    let user = PhoneNumber::new(format!("4477009{key:05}"));
    let wire_offer = offer::for_the_bridge(&page.offer().await?);
    line.graph.register_offer(&call_id, &wire_offer);
    let body = webhooks::connect_offer(
        &BusinessLine::default(),
        &call_id,
        &user,
        &format!("Chromium caller {key}"),
        &wire_offer,
        unix_now(),
    );
    let dialled = Instant::now();
    let reply = post_webhook(line.http, line.bridge_url, line.app_secret, body).await?;
    anyhow::ensure!(
        reply.status == 200 && reply.refusal().is_none(),
        "the bridge did not take the call: {} {}",
        reply.status,
        reply.body
    );
    let answer = line
        .graph
        .wait_for(&call_id, "pre_accept", ANSWER_TIMEOUT)
        .await
        .and_then(|action| action.sdp)
        .context("the bridge sent no pre_accept with an answer")?;
    page.answer(&answer).await?;
    let accepted = line
        .graph
        .wait_for(&call_id, "accept", ANSWER_TIMEOUT)
        .await
        .context("the bridge did not accept")?;
    let setup = accepted.responded_at.saturating_duration_since(dialled);

    let listen = line.clip_seconds + TAIL_SECONDS;
    let greeting = within(page.speech(0, listen))
        .await
        .context("no greeting")?;
    // The answer is looked for from where the caller began to speak: the greeting's onset plus
    // the clip's length can fall inside the greeting's tail (the onset is found where the audio
    // got loud, and the jitter buffer may have stretched it), which was then taken for the
    // answer's onset.
    let spoke_at = page.speak(CALLER_TURN_MS).await?;
    let later = within(page.speech(spoke_at, listen))
        .await
        .context("no answer to the caller's turn")?;
    let result = page.finish().await?;

    let body = webhooks::terminate(
        &BusinessLine::default(),
        &call_id,
        &user,
        unix_now(),
        Some(dialled.elapsed().as_secs().max(1)),
        false,
    );
    let reply = post_webhook(line.http, line.bridge_url, line.app_secret, body).await?;
    anyhow::ensure!(reply.status == 200, "terminate answered {}", reply.status);
    line.graph.forget_call(&call_id);
    Ok(CallRecord {
        key,
        page: result,
        onsets: [greeting, later],
        setup,
        bridge_sent_late: None,
    })
}

async fn within<T>(
    wait: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(SPEECH_TIMEOUT, wait)
        .await
        .context("timed out")?
}
