//! The Prometheus metrics of one bridge process, registered once; labels come from enums only
//! (never phone numbers or call ids).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics; cheap to clone (every field is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub active_calls: IntGauge,
    pub max_calls: IntGauge,
    /// The `SCHED_FIFO` priority the runtime's threads run at (0: scheduled normally).
    pub sched_fifo_priority: IntGauge,
    /// 1 while the process drains (refusing new calls), else 0.
    pub draining: IntGauge,
    /// Ended calls by direction and `CallEnd` outcome.
    pub calls: IntCounterVec,
    /// Calls refused at admission, by reason.
    pub rejections: IntCounterVec,
    /// Refused calls whose `reject` was not sent because too many were already in flight.
    pub rejects_skipped: IntCounter,
    /// Webhook deliveries by result (ok, unauthorized, too_large, bad_request, at_capacity…).
    pub webhook_requests: IntCounterVec,
    /// Webhook elements refused for being over a limit (`whatsapp::webhook::InputRefusal`), by
    /// reason: they create no state and reach no API.
    pub webhook_events_refused: IntCounterVec,
    /// Tombstones (ended or refused call ids) evicted before their time because the map was
    /// full: a flood of distinct ids.
    pub tombstones_evicted: IntCounter,
    /// Remote ICE candidates the bridge cannot use (port 0, not UDP, unparsable), dropped from
    /// the offer before the WebRTC stack sees them.
    pub ice_candidates_dropped: IntCounter,
    /// Graph API request attempts by action and outcome (HTTP status, `timeout`, ...).
    pub graph_requests: IntCounterVec,
    /// Webhook received → `accept` returned 200.
    pub call_setup_seconds: Histogram,
    /// The caller stops speaking (VAD) → the AI's first audio of its answer.
    pub ai_response_latency_seconds: Histogram,
    /// Answered calls, from answer to end.
    pub call_duration_seconds: Histogram,
    pub barge_ins: IntCounter,
    /// 20 ms audio frames by direction (`in`: caller → AI, `out`: AI → caller).
    pub audio_frames: IntCounterVec,
    /// Caller frames filled by packet loss concealment (PLC): lost packets not rebuilt from
    /// FEC, and undecodable ones.
    pub concealed_frames: IntCounter,
    /// Lost caller frames rebuilt from the next packet's in-band FEC.
    pub fec_recovered_frames: IntCounter,
    /// The caller's keypresses (RFC 4733), by key.
    pub keypresses: IntCounterVec,
    /// Pacer polls that came a whole frame or more late.
    pub late_pacer_ticks: IntCounter,
    /// Calls sending in-band FEC toward the caller now (their caller reports loss).
    pub calls_sending_fec: IntGauge,
    /// Times a call started sending in-band FEC toward the caller.
    pub fec_switch_ons: IntCounter,
    /// How long after its 20 ms slot each outgoing frame is sent (the call task's wake-up
    /// delay): the bridge's share of the jitter the caller hears.
    pub frame_send_delay_seconds: Histogram,
    /// AI `error` events and session failures by code.
    pub ai_errors: IntCounterVec,
    /// Tool calls by tool and outcome.
    pub tool_calls: IntCounterVec,
    /// Failed store writes by operation.
    pub store_errors: IntCounterVec,
    /// Transcript turns dropped because the store fell behind.
    pub transcript_turns_dropped: IntCounter,
    /// Rows deleted by the retention purge, by table (`transcript_turns`, `calls`).
    pub retention_purged_rows: IntCounterVec,
    /// Callers whose data was deleted on request, by route (`tool`: they asked the AI,
    /// `admin`: the admin API).
    pub callers_forgotten: IntCounterVec,
    /// 1 while Redis cannot be reached (`REDIS_URL` set): calls go on, admission uses what this
    /// replica knows.
    pub fleet_degraded: IntGauge,
    /// Redis operations of the fleet by operation and outcome (`ok`, `error`, `timeout`).
    pub fleet_operations: IntCounterVec,
    /// Webhook events for calls owned by another replica, by kind and outcome (`sent`,
    /// `received`, `no_owner`, `unavailable`, `dropped`).
    pub forwarded_events: IntCounterVec,
    /// From a replica forwarding an event to its owner taking it in.
    pub forward_latency_seconds: Histogram,
    /// Live calls and live replicas of the whole fleet, as of the last heartbeat.
    pub cluster_active_calls: IntGauge,
    pub cluster_replicas: IntGauge,
    /// Reminders (and callbacks) that came due and were claimed for a first attempt, by kind.
    pub reminders_due: IntCounterVec,
    /// Reminders this replica is delivering now.
    pub reminders_in_delivery: IntGauge,
    /// Delivered reminders by kind and channel (`call`, `message`).
    pub reminders_delivered: IntCounterVec,
    /// Reminders given up, by kind and reason.
    pub reminders_failed: IntCounterVec,
    /// From a reminder's due time to its delivery.
    pub reminder_delivery_delay_seconds: Histogram,
    /// Delivery attempts by channel (`call`, `message`, `permission_request`) and outcome.
    pub reminder_attempts: IntCounterVec,
    /// Callbacks queued for callers refused at capacity.
    pub callbacks_queued: IntCounter,
    /// WhatsApp messages sent, by kind (`text`, `template`, `permission_request`) and outcome.
    pub messages_sent: IntCounterVec,
    /// The AI provider's rate limits as its latest `rate_limits.updated` said, by limit
    /// (`requests`, `tokens`, `other`) and value (`limit`, `remaining`).
    pub ai_rate_limit: GaugeVec,
    /// AI responses that ended `failed`, by what the bridge did (`retried`, `apologised`,
    /// `gave_up`).
    pub ai_failed_responses: IntCounterVec,
    /// Mid-call AI sessions lost and reopened, by cause (`close_1011`, `close_1006`,
    /// `session_expired`, `network`, ...).
    pub ai_reconnects: IntCounterVec,
    /// From losing a call's AI session to a new one configured, its conversation replayed and
    /// the caller's audio flowing again.
    pub ai_recovery_seconds: Histogram,
    /// Lost AI sessions that could not be reopened (the call ended `ai_failed`).
    pub ai_recoveries_failed: IntCounter,
    /// Sessions replaced before the provider's limit, by how (`at_pause`, `forced`).
    pub ai_rollovers: IntCounterVec,
    /// Failed attempts to open an AI session, by cause (`http_429`, `http_5xx`, `network`, ...).
    pub ai_connect_failures: IntCounterVec,
    /// 1 while the AI circuit breaker is open and new calls are refused.
    pub ai_breaker_open: IntGauge,
    /// HTTP connections open now, by listener (`main`, `metrics`).
    pub http_connections_open: IntGaugeVec,
    /// HTTP connections closed at once because the listener was at `HTTP_MAX_CONNECTIONS`.
    pub http_connections_refused: IntCounterVec,
    /// HTTP connections (or requests) ended by a timeout, by listener and reason (`header`,
    /// `body`, `idle`).
    pub http_timeouts: IntCounterVec,
    /// Tasks alive on the process's tokio runtime, as of the last scrape.
    pub runtime_alive_tasks: IntGauge,
    /// Entries in the call registry's maps by map (`calls`, `phones`, `tombstones`,
    /// `reserved`, `early_commands`), as of the last scrape.
    pub registry_entries: IntGaugeVec,
    /// Calls this replica estimates it can still take (its measured headroom, never more than
    /// `MAX_CONCURRENT_CALLS` leaves).
    pub headroom_calls: IntGauge,
    /// 1 while the headroom would admit a new call.
    pub headroom_admitting: IntGauge,
    /// CPUs this process may use (affinity, cgroup quota).
    pub headroom_cpus: Gauge,
    /// CPU this process used over the last second, in cores.
    pub headroom_cpu_used: Gauge,
    /// What one more call is expected to cost, in cores.
    pub headroom_call_cost: Gauge,
    /// p99 of the frame send delay over the last sample (0 when too few frames).
    pub headroom_send_delay_p99: Gauge,
    /// p99 of the runtime's lag over the last sample.
    pub headroom_runtime_lag_p99: Gauge,
}

/// The connection metrics of one HTTP listener, its labels applied.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub open: IntGauge,
    pub refused: IntCounter,
    pub header_timeouts: IntCounter,
    pub body_timeouts: IntCounter,
    pub idle_timeouts: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let active_calls = IntGauge::new(
            "whatsapp_bridge_active_calls",
            "Calls admitted and not yet ended",
        )
        .expect("valid metric");
        let max_calls = IntGauge::new(
            "whatsapp_bridge_max_calls",
            "Maximum concurrent calls (MAX_CONCURRENT_CALLS)",
        )
        .expect("valid metric");
        let sched_fifo_priority = IntGauge::new(
            "whatsapp_bridge_sched_fifo_priority",
            "SCHED_FIFO priority of the runtime's threads (0: scheduled normally; SCHED_FIFO_PRIORITY)",
        )
        .expect("valid metric");
        let draining = IntGauge::new(
            "whatsapp_bridge_draining",
            "1 while shutting down and refusing new calls",
        )
        .expect("valid metric");
        let calls = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_calls_total",
                "Ended calls by direction and outcome",
            ),
            &["direction", "outcome"],
        )
        .expect("valid metric");
        let rejections = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_call_rejections_total",
                "Calls refused at admission, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let webhook_requests = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_webhook_requests_total",
                "Webhook requests by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let webhook_events_refused = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_webhook_events_refused_total",
                "Webhook elements refused for being over a limit, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let tombstones_evicted = IntCounter::new(
            "whatsapp_bridge_tombstones_evicted_total",
            "Ended or refused call ids forgotten early because the tombstone map was full",
        )
        .expect("valid metric");
        let ice_candidates_dropped = IntCounter::new(
            "whatsapp_bridge_ice_candidates_dropped_total",
            "Remote ICE candidates dropped as unusable (port 0, not UDP, unparsable)",
        )
        .expect("valid metric");
        let graph_requests = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_graph_requests_total",
                "Graph API request attempts by action and outcome",
            ),
            &["action", "status"],
        )
        .expect("valid metric");
        let call_setup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "whatsapp_bridge_call_setup_seconds",
                "Time from the connect webhook to a successful accept",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0,
            ]),
        )
        .expect("valid metric");
        let ai_response_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "whatsapp_bridge_ai_response_latency_seconds",
                "Time from the caller's end of speech to the AI's first audio",
            )
            .buckets(vec![
                0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let call_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "whatsapp_bridge_call_duration_seconds",
                "Duration of answered calls",
            )
            .buckets(vec![
                5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
            ]),
        )
        .expect("valid metric");
        let barge_ins = IntCounter::new(
            "whatsapp_bridge_barge_ins_total",
            "Times the caller interrupted queued AI audio",
        )
        .expect("valid metric");
        let audio_frames = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_audio_frames_total",
                "20 ms audio frames by direction",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let rejects_skipped = IntCounter::new(
            "whatsapp_bridge_rejects_skipped_total",
            "Refused calls not declined to Meta because too many rejects were in flight",
        )
        .expect("valid metric");
        let concealed_frames = IntCounter::new(
            "whatsapp_bridge_concealed_frames_total",
            "Caller audio frames filled by packet loss concealment (not rebuilt from FEC)",
        )
        .expect("valid metric");
        let fec_recovered_frames = IntCounter::new(
            "whatsapp_bridge_fec_recovered_frames_total",
            "Lost caller audio frames rebuilt from the next packet's in-band FEC",
        )
        .expect("valid metric");
        let keypresses = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_keypresses_total",
                "Keys the callers pressed (RFC 4733 telephone events), by key",
            ),
            &["key"],
        )
        .expect("valid metric");
        let late_pacer_ticks = IntCounter::new(
            "whatsapp_bridge_late_pacer_ticks_total",
            "Outgoing audio ticks that ran a frame or more late",
        )
        .expect("valid metric");
        let frame_send_delay_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "whatsapp_bridge_frame_send_delay_seconds",
                "How long after its 20 ms slot each outgoing audio frame was sent",
            )
            .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05]),
        )
        .expect("valid metric");
        let ai_errors = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_ai_errors_total",
                "Realtime AI error events and session failures by code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let tool_calls = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_tool_calls_total",
                "AI function calls by tool and outcome",
            ),
            &["tool", "outcome"],
        )
        .expect("valid metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_store_errors_total",
                "Failed call-log and transcript writes by operation",
            ),
            &["operation"],
        )
        .expect("valid metric");
        let transcript_turns_dropped = IntCounter::new(
            "whatsapp_bridge_transcript_turns_dropped_total",
            "Transcript turns dropped because the store fell behind",
        )
        .expect("valid metric");
        let retention_purged_rows = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_retention_purged_rows_total",
                "Rows deleted by the transcript retention purge, by table",
            ),
            &["table"],
        )
        .expect("valid metric");
        let callers_forgotten = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_callers_forgotten_total",
                "Callers whose data was deleted on request, by route (tool, admin)",
            ),
            &["via"],
        )
        .expect("valid metric");
        let fleet_degraded = IntGauge::new(
            "whatsapp_bridge_fleet_degraded",
            "1 while Redis cannot be reached and admission uses this replica's own knowledge",
        )
        .expect("valid metric");
        let fleet_operations = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_fleet_operations_total",
                "Redis operations of the fleet by operation and outcome",
            ),
            &["op", "outcome"],
        )
        .expect("valid metric");
        let forwarded_events = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_forwarded_events_total",
                "Webhook events for calls owned by another replica, by kind and outcome",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let forward_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "whatsapp_bridge_forward_latency_seconds",
                "From forwarding an event to the call's owner to the owner taking it in",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
                1.0,
            ]),
        )
        .expect("valid metric");
        let cluster_active_calls = IntGauge::new(
            "whatsapp_bridge_cluster_active_calls",
            "Live calls of every replica sharing this Redis, as of the last heartbeat",
        )
        .expect("valid metric");
        let cluster_replicas = IntGauge::new(
            "whatsapp_bridge_cluster_replicas",
            "Replicas sharing this Redis that sent a heartbeat recently",
        )
        .expect("valid metric");
        let reminders_due = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_reminders_due_total",
                "Reminders and callbacks that came due and were claimed for delivery, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let reminders_in_delivery = IntGauge::new(
            "whatsapp_bridge_reminders_in_delivery",
            "Reminders this replica is delivering now",
        )
        .expect("valid metric");
        let reminders_delivered = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_reminders_delivered_total",
                "Delivered reminders by kind and channel",
            ),
            &["kind", "channel"],
        )
        .expect("valid metric");
        let reminders_failed = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_reminders_failed_total",
                "Reminders given up, by kind and reason",
            ),
            &["kind", "reason"],
        )
        .expect("valid metric");
        let reminder_delivery_delay_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "whatsapp_bridge_reminder_delivery_delay_seconds",
                "From a reminder's due time to its delivery",
            )
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
            ]),
        )
        .expect("valid metric");
        let reminder_attempts = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_reminder_attempts_total",
                "Reminder delivery attempts by channel and outcome",
            ),
            &["channel", "outcome"],
        )
        .expect("valid metric");
        let callbacks_queued = IntCounter::new(
            "whatsapp_bridge_callbacks_queued_total",
            "Callbacks queued for callers refused at capacity",
        )
        .expect("valid metric");
        let messages_sent = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_messages_sent_total",
                "WhatsApp messages sent by kind and outcome",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let ai_rate_limit = GaugeVec::new(
            Opts::new(
                "whatsapp_bridge_ai_rate_limit",
                "The AI provider's rate limits from its latest rate_limits.updated",
            ),
            &["name", "value"],
        )
        .expect("valid metric");
        let ai_reconnects = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_ai_reconnects_total",
                "Mid-call AI sessions lost and reopened, by cause",
            ),
            &["cause"],
        )
        .expect("valid metric");
        let ai_recovery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "whatsapp_bridge_ai_recovery_seconds",
                "From losing a call's AI session to the caller's audio flowing into a new one",
            )
            .buckets(vec![
                0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0,
            ]),
        )
        .expect("valid metric");
        let ai_recoveries_failed = IntCounter::new(
            "whatsapp_bridge_ai_recoveries_failed_total",
            "Lost AI sessions that could not be reopened",
        )
        .expect("valid metric");
        let ai_rollovers = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_ai_rollovers_total",
                "AI sessions replaced before the provider's session limit, by how",
            ),
            &["how"],
        )
        .expect("valid metric");
        let ai_connect_failures = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_ai_connect_failures_total",
                "Failed attempts to open an AI session, by cause",
            ),
            &["cause"],
        )
        .expect("valid metric");
        let ai_breaker_open = IntGauge::new(
            "whatsapp_bridge_ai_breaker_open",
            "1 while the AI circuit breaker is open and new calls are refused",
        )
        .expect("valid metric");
        let ai_failed_responses = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_ai_failed_responses_total",
                "AI responses that ended failed, by what the bridge did",
            ),
            &["action"],
        )
        .expect("valid metric");
        let http_connections_open = IntGaugeVec::new(
            Opts::new(
                "whatsapp_bridge_http_connections_open",
                "HTTP connections open now, by listener",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let http_connections_refused = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_http_connections_refused_total",
                "HTTP connections closed at once because the listener was at its cap",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let http_timeouts = IntCounterVec::new(
            Opts::new(
                "whatsapp_bridge_http_timeouts_total",
                "HTTP connections or requests ended by a timeout, by listener and reason",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let runtime_alive_tasks = IntGauge::new(
            "whatsapp_bridge_runtime_alive_tasks",
            "Tasks alive on the tokio runtime (read at each scrape)",
        )
        .expect("valid metric");
        let registry_entries = IntGaugeVec::new(
            Opts::new(
                "whatsapp_bridge_registry_entries",
                "Entries in the call registry's maps, by map (read at each scrape)",
            ),
            &["map"],
        )
        .expect("valid metric");
        let headroom_calls = IntGauge::new(
            "whatsapp_bridge_headroom_calls",
            "Calls this replica estimates it can still take (measured headroom, at most MAX_CONCURRENT_CALLS free)",
        )
        .expect("valid metric");
        let headroom_admitting = IntGauge::new(
            "whatsapp_bridge_headroom_admitting",
            "1 while the measured headroom would admit a new call",
        )
        .expect("valid metric");
        let calls_sending_fec = IntGauge::new(
            "whatsapp_bridge_calls_sending_fec",
            "Calls sending in-band FEC toward the caller now, because the caller reports loss",
        )
        .expect("valid metric");
        let fec_switch_ons = IntCounter::new(
            "whatsapp_bridge_fec_switch_ons_total",
            "Times a call started sending in-band FEC toward the caller",
        )
        .expect("valid metric");
        let headroom_cpus = Gauge::new(
            "whatsapp_bridge_headroom_cpus",
            "CPUs this process may use (affinity and cgroup quota)",
        )
        .expect("valid metric");
        let headroom_cpu_used = Gauge::new(
            "whatsapp_bridge_headroom_cpu_used_cores",
            "CPU this process used over the last second, in cores",
        )
        .expect("valid metric");
        let headroom_call_cost = Gauge::new(
            "whatsapp_bridge_headroom_call_cost_cores",
            "CPU one more call is expected to cost, in cores",
        )
        .expect("valid metric");
        let headroom_send_delay_p99 = Gauge::new(
            "whatsapp_bridge_headroom_send_delay_p99_seconds",
            "p99 of the frame send delay over the last headroom sample",
        )
        .expect("valid metric");
        let headroom_runtime_lag_p99 = Gauge::new(
            "whatsapp_bridge_headroom_runtime_lag_p99_seconds",
            "p99 of how late the runtime's probe tick fired over the last headroom sample",
        )
        .expect("valid metric");
        for collector in [
            Box::new(active_calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(max_calls.clone()),
            Box::new(sched_fifo_priority.clone()),
            Box::new(draining.clone()),
            Box::new(calls.clone()),
            Box::new(rejections.clone()),
            Box::new(rejects_skipped.clone()),
            Box::new(webhook_requests.clone()),
            Box::new(webhook_events_refused.clone()),
            Box::new(tombstones_evicted.clone()),
            Box::new(ice_candidates_dropped.clone()),
            Box::new(graph_requests.clone()),
            Box::new(call_setup_seconds.clone()),
            Box::new(ai_response_latency_seconds.clone()),
            Box::new(call_duration_seconds.clone()),
            Box::new(barge_ins.clone()),
            Box::new(audio_frames.clone()),
            Box::new(concealed_frames.clone()),
            Box::new(fec_recovered_frames.clone()),
            Box::new(keypresses.clone()),
            Box::new(late_pacer_ticks.clone()),
            Box::new(calls_sending_fec.clone()),
            Box::new(fec_switch_ons.clone()),
            Box::new(frame_send_delay_seconds.clone()),
            Box::new(ai_errors.clone()),
            Box::new(tool_calls.clone()),
            Box::new(store_errors.clone()),
            Box::new(transcript_turns_dropped.clone()),
            Box::new(retention_purged_rows.clone()),
            Box::new(callers_forgotten.clone()),
            Box::new(fleet_degraded.clone()),
            Box::new(fleet_operations.clone()),
            Box::new(forwarded_events.clone()),
            Box::new(forward_latency_seconds.clone()),
            Box::new(cluster_active_calls.clone()),
            Box::new(cluster_replicas.clone()),
            Box::new(reminders_due.clone()),
            Box::new(reminders_in_delivery.clone()),
            Box::new(reminders_delivered.clone()),
            Box::new(reminders_failed.clone()),
            Box::new(reminder_delivery_delay_seconds.clone()),
            Box::new(reminder_attempts.clone()),
            Box::new(callbacks_queued.clone()),
            Box::new(messages_sent.clone()),
            Box::new(ai_rate_limit.clone()),
            Box::new(ai_failed_responses.clone()),
            Box::new(ai_reconnects.clone()),
            Box::new(ai_recovery_seconds.clone()),
            Box::new(ai_recoveries_failed.clone()),
            Box::new(ai_rollovers.clone()),
            Box::new(ai_connect_failures.clone()),
            Box::new(ai_breaker_open.clone()),
            Box::new(http_connections_open.clone()),
            Box::new(http_connections_refused.clone()),
            Box::new(http_timeouts.clone()),
            Box::new(runtime_alive_tasks.clone()),
            Box::new(registry_entries.clone()),
            Box::new(headroom_calls.clone()),
            Box::new(headroom_admitting.clone()),
            Box::new(headroom_cpus.clone()),
            Box::new(headroom_cpu_used.clone()),
            Box::new(headroom_call_cost.clone()),
            Box::new(headroom_send_delay_p99.clone()),
            Box::new(headroom_runtime_lag_p99.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            registry,
            active_calls,
            max_calls,
            sched_fifo_priority,
            draining,
            calls,
            rejections,
            rejects_skipped,
            webhook_requests,
            webhook_events_refused,
            tombstones_evicted,
            ice_candidates_dropped,
            graph_requests,
            call_setup_seconds,
            ai_response_latency_seconds,
            call_duration_seconds,
            barge_ins,
            audio_frames,
            concealed_frames,
            fec_recovered_frames,
            keypresses,
            late_pacer_ticks,
            calls_sending_fec,
            fec_switch_ons,
            frame_send_delay_seconds,
            ai_errors,
            tool_calls,
            store_errors,
            transcript_turns_dropped,
            retention_purged_rows,
            callers_forgotten,
            fleet_degraded,
            fleet_operations,
            forwarded_events,
            forward_latency_seconds,
            cluster_active_calls,
            cluster_replicas,
            reminders_due,
            reminders_in_delivery,
            reminders_delivered,
            reminders_failed,
            reminder_delivery_delay_seconds,
            reminder_attempts,
            callbacks_queued,
            messages_sent,
            ai_rate_limit,
            ai_failed_responses,
            ai_reconnects,
            ai_recovery_seconds,
            ai_recoveries_failed,
            ai_rollovers,
            ai_connect_failures,
            ai_breaker_open,
            http_connections_open,
            http_connections_refused,
            http_timeouts,
            runtime_alive_tasks,
            registry_entries,
            headroom_calls,
            headroom_admitting,
            headroom_cpus,
            headroom_cpu_used,
            headroom_call_cost,
            headroom_send_delay_p99,
            headroom_runtime_lag_p99,
        }
    }

    /// The connection metrics of the listener named `listener` (its series exist, at 0, from
    /// here on).
    pub fn http_listener(&self, listener: &str) -> ListenerMetrics {
        let timeouts = |reason: &str| self.http_timeouts.with_label_values(&[listener, reason]);
        ListenerMetrics {
            open: self.http_connections_open.with_label_values(&[listener]),
            refused: self.http_connections_refused.with_label_values(&[listener]),
            header_timeouts: timeouts("header"),
            body_timeouts: timeouts("body"),
            idle_timeouts: timeouts("idle"),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(%err, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Error codes of the Realtime API (openai-realtime.md) that `ai_errors_total` counts under their
/// own label; any other code a provider sends is counted as `other`, so a provider cannot grow
/// the metric's series without bound.
const KNOWN_AI_ERROR_CODES: &[&str] = &[
    "beta_api_shape_disabled",
    "conversation_already_has_active_response",
    "input_audio_buffer_commit_empty",
    "insufficient_quota",
    "invalid_api_key",
    "invalid_value",
    "missing_required_parameter",
    "rate_limit_exceeded",
    "response_cancel_not_active",
    "server_error",
    "session_expired",
    "unknown_parameter",
];

/// The `code` label of `ai_errors_total` for an error event's code: the code when it is a known
/// one, `unknown` when the event had none, `other` otherwise.
pub fn ai_error_code_label(code: Option<&str>) -> &'static str {
    match code {
        None => "unknown",
        Some(code) => KNOWN_AI_ERROR_CODES
            .iter()
            .find(|known| **known == code)
            .copied()
            .unwrap_or("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grafana_dashboard_shows_every_metric() {
        let dashboard = include_str!("../../../infra/grafana/whatsapp-voice-bridge.json");
        for family in Metrics::new().registry.gather() {
            assert!(
                dashboard.contains(family.name()),
                "{} is not on the dashboard",
                family.name()
            );
        }
    }

    #[test]
    fn ai_error_codes_are_labelled_from_a_fixed_set() {
        assert_eq!(
            ai_error_code_label(Some("session_expired")),
            "session_expired"
        );
        assert_eq!(ai_error_code_label(None), "unknown");
        assert_eq!(ai_error_code_label(Some("made_up_code_1")), "other");
        let metrics = Metrics::new();
        for n in 0..100 {
            let code = format!("made_up_code_{n}");
            metrics
                .ai_errors
                .with_label_values(&[ai_error_code_label(Some(&code))])
                .inc();
        }
        let text = metrics.render();
        assert!(text.contains("whatsapp_bridge_ai_errors_total{code=\"other\"} 100"));
        assert!(!text.contains("made_up_code"));
    }

    #[test]
    fn rendered_text_carries_the_counters() {
        let metrics = Metrics::new();
        metrics.max_calls.set(3);
        metrics.rejections.with_label_values(&["at_capacity"]).inc();
        let text = metrics.render();
        assert!(text.contains("whatsapp_bridge_max_calls 3"));
        assert!(text.contains("whatsapp_bridge_call_rejections_total{reason=\"at_capacity\"} 1"));
    }
}
