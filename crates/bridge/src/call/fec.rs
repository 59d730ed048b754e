//! A call's in-band FEC toward the caller: the caller's loss reports go to the sans-IO
//! controller, its decisions to the downlink's encoder, to the metrics and to the log.

use std::time::Instant;

use tracing::{debug, info, warn};

use crate::media::downlink::Downlink;
use crate::media::loss_protection::LossProtection;
use crate::media::peer::LossReport;
use crate::metrics::Metrics;

/// The controller of one call, and what it has told the metrics.
pub(super) struct DownlinkFec {
    controller: LossProtection,
    /// Calls sending FEC now: raised while this call does, lowered when it stops or ends.
    sending: prometheus::IntGauge,
    switch_ons: prometheus::IntCounter,
}

impl DownlinkFec {
    pub(super) fn new(controller: LossProtection, metrics: &Metrics) -> Self {
        Self {
            controller,
            sending: metrics.calls_sending_fec.clone(),
            switch_ons: metrics.fec_switch_ons.clone(),
        }
    }

    /// One reception report from the caller, arrived at `now`: the encoder follows the
    /// controller's decision from its next frame.
    pub(super) fn on_report(&mut self, now: Instant, report: &LossReport, downlink: &mut Downlink) {
        let was_on = self.controller.protecting();
        let Some(fec) = self.controller.on_report(now, report) else {
            return;
        };
        if let Err(err) = downlink.set_fec(fec) {
            // The encoder keeps its settings; the next change is tried afresh.
            warn!(%err, "changing the downlink's FEC settings failed");
        }
        let estimate = format!("{:.1}", self.controller.estimated_loss_percent());
        match (was_on, fec.inband_fec) {
            (false, true) => {
                self.sending.inc();
                self.switch_ons.inc();
                info!(
                    reported_loss_percent = %estimate,
                    expected_loss_percent = fec.expected_loss_percent,
                    bitrate_bps = fec.bitrate_bps,
                    "the caller loses packets: downlink FEC on"
                );
            }
            (true, false) => {
                self.sending.dec();
                info!(
                    bitrate_bps = fec.bitrate_bps,
                    "the caller's loss is over: downlink FEC off"
                );
            }
            _ => debug!(
                reported_loss_percent = %estimate,
                expected_loss_percent = fec.expected_loss_percent,
                "downlink FEC adjusted"
            ),
        }
    }
}

impl Drop for DownlinkFec {
    /// A call that ends while sending FEC no longer counts as sending it.
    fn drop(&mut self) {
        if self.controller.protecting() {
            self.sending.dec();
        }
    }
}
