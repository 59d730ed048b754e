//! Packet loss as mobile networks cause it, for the simulated phones: random or in bursts.
//!
//! A two-state Gilbert model: in the good state nothing is lost, in the bad state everything
//! is. From the good state the chain enters the bad one with probability `p`, and leaves it
//! with `r`, so bursts last `1 / r` packets on average and the long-run loss is `p / (p + r)`.
//! A mean burst of one packet is plain random (Bernoulli) loss.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bridge::media::peer::{
    DropDecision, MediaPeer, PeerError, PeerProfile, PeerSettings, WireLoss,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a direction of a call loses packets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossProfile {
    /// Long-run share of packets lost, 0.0..1.0.
    pub rate: f64,
    /// Mean number of packets lost in a row (1.0: random loss).
    pub mean_burst: f64,
}

impl LossProfile {
    /// No loss at all.
    pub const NONE: Self = Self {
        rate: 0.0,
        mean_burst: 1.0,
    };

    /// `percent` % random loss.
    pub fn random(percent: f64) -> Self {
        Self {
            rate: percent / 100.0,
            mean_burst: 1.0,
        }
    }

    pub fn is_lossless(&self) -> bool {
        self.rate <= 0.0
    }
}

/// How a phone's call loses packets, each direction on its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallLoss {
    /// What the phone sends toward the bridge.
    pub uplink: LossProfile,
    /// What the bridge sends toward the phone.
    pub downlink: LossProfile,
}

impl Default for CallLoss {
    fn default() -> Self {
        Self::NONE
    }
}

impl CallLoss {
    pub const NONE: Self = Self {
        uplink: LossProfile::NONE,
        downlink: LossProfile::NONE,
    };

    pub fn is_lossless(&self) -> bool {
        self.uplink.is_lossless() && self.downlink.is_lossless()
    }

    /// The wire loss of one phone's peer: the downlink's drops are of arriving packets, the
    /// uplink's of sent ones, each its own process seeded from `seed`, both counted in `counts`.
    pub fn wire_loss(&self, seed: u64, counts: &Arc<WireLossCounts>) -> WireLoss {
        let decide = |profile, seed, lost: fn(&WireLossCounts) -> &AtomicU64| -> DropDecision {
            let mut loss = PacketLoss::new(profile, seed);
            let counts = counts.clone();
            Box::new(move || {
                let gone = loss.lose_next();
                if gone {
                    lost(&counts).fetch_add(1, Ordering::Relaxed);
                }
                gone
            })
        };
        WireLoss {
            inbound: decide(self.downlink, seed, |c| &c.downlink),
            outbound: decide(self.uplink, seed ^ 0x9e37_79b9_7f4a_7c15, |c| &c.uplink),
        }
    }
}

/// A simulated phone's peer that loses packets as `loss` says (a fresh seed each call),
/// counting them in `counts`; a plain phone peer when nothing is to be lost.
pub async fn phone_peer(
    settings: &PeerSettings,
    loss: CallLoss,
    counts: &Arc<WireLossCounts>,
) -> Result<MediaPeer, PeerError> {
    if loss.is_lossless() {
        MediaPeer::new(settings, PeerProfile::SimulatedPhone, None).await
    } else {
        MediaPeer::with_wire_loss(settings, loss.wire_loss(rand::random(), counts)).await
    }
}

/// RTP packets a phone's wire lost so far, per direction.
#[derive(Debug, Default)]
pub struct WireLossCounts {
    pub uplink: AtomicU64,
    pub downlink: AtomicU64,
}

impl WireLossCounts {
    /// (uplink, downlink) packets lost.
    pub fn get(&self) -> (u64, u64) {
        (
            self.uplink.load(Ordering::Relaxed),
            self.downlink.load(Ordering::Relaxed),
        )
    }
}

/// Decides, packet by packet, which are lost.
#[derive(Debug)]
pub struct PacketLoss {
    /// Good → bad.
    enter: f64,
    /// Bad → good.
    leave: f64,
    bad: bool,
    rng: StdRng,
}

impl PacketLoss {
    /// A loss process for `profile`, repeatable for one `seed`.
    pub fn new(profile: LossProfile, seed: u64) -> Self {
        let rate = profile.rate.clamp(0.0, 0.95);
        let leave = 1.0 / profile.mean_burst.max(1.0);
        // rate = enter / (enter + leave)  =>  enter = leave * rate / (1 - rate)
        let enter = (leave * rate / (1.0 - rate)).min(1.0);
        Self {
            enter,
            leave,
            bad: false,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Whether the next packet is lost.
    pub fn lose_next(&mut self) -> bool {
        if self.enter <= 0.0 {
            return false;
        }
        let draw: f64 = self.rng.random();
        self.bad = if self.bad {
            draw >= self.leave
        } else {
            draw < self.enter
        };
        self.bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Share lost and mean run of losses over `n` packets.
    fn measure(profile: LossProfile, n: usize) -> (f64, f64) {
        let mut loss = PacketLoss::new(profile, 7);
        let (mut lost, mut runs, mut in_run) = (0usize, 0usize, false);
        for _ in 0..n {
            let gone = loss.lose_next();
            if gone {
                lost += 1;
                if !in_run {
                    runs += 1;
                }
            }
            in_run = gone;
        }
        (lost as f64 / n as f64, lost as f64 / runs.max(1) as f64)
    }

    #[test]
    fn random_loss_has_the_rate_asked_for_in_runs_of_about_one() {
        let (rate, burst) = measure(LossProfile::random(5.0), 200_000);
        assert!((rate - 0.05).abs() < 0.003, "rate {rate}");
        assert!(burst < 1.1, "mean burst {burst}");
    }

    #[test]
    fn bursty_loss_has_the_rate_and_the_mean_burst_asked_for() {
        let profile = LossProfile {
            rate: 0.10,
            mean_burst: 3.0,
        };
        let (rate, burst) = measure(profile, 400_000);
        assert!((rate - 0.10).abs() < 0.006, "rate {rate}");
        assert!((burst - 3.0).abs() < 0.2, "mean burst {burst}");
    }

    #[test]
    fn a_call_loses_each_direction_as_its_own_profile_says_and_counts_it() {
        let loss = CallLoss {
            uplink: LossProfile::random(10.0),
            downlink: LossProfile::NONE,
        };
        let counts = Arc::new(WireLossCounts::default());
        let mut wire = loss.wire_loss(5, &counts);
        let sent = (0..10_000).filter(|_| (wire.outbound)()).count() as u64;
        let received = (0..10_000).filter(|_| (wire.inbound)()).count() as u64;
        assert!((900..1_100).contains(&sent), "{sent} of 10000 lost");
        assert_eq!(received, 0);
        assert_eq!(counts.get(), (sent, 0));
    }

    #[test]
    fn no_loss_loses_nothing_and_a_seed_repeats() {
        assert_eq!(measure(LossProfile::NONE, 10_000).0, 0.0);
        let draws = |seed| {
            let mut loss = PacketLoss::new(LossProfile::random(10.0), seed);
            (0..1_000).map(|_| loss.lose_next()).collect::<Vec<_>>()
        };
        assert_eq!(draws(3), draws(3));
        assert_ne!(draws(3), draws(4));
    }
}
