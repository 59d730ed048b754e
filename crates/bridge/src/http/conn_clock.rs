//! When one HTTP connection has waited too long for a client's request: sans-IO, it is told
//! what happened and when, and says the deadline and the reason for closing.

use std::time::Duration;

use tokio::time::Instant;

/// Why a connection was closed by its clock (the metric's `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The client did not complete a request's headers in time.
    Header,
    /// A kept-alive connection brought no new request in time.
    Idle,
}

/// Where a connection is between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's headers, since `since`. `kept_alive`: a response was sent
    /// before on this connection; `first_byte`: when the next request began to arrive.
    AwaitingHead {
        since: Instant,
        kept_alive: bool,
        first_byte: Option<Instant>,
    },
    /// A request is being handled: the body's own deadline and the handler bound it.
    InRequest,
}

/// The header and idle deadlines of one connection.
#[derive(Debug)]
pub struct ConnectionClock {
    header_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
}

impl ConnectionClock {
    /// A connection accepted at `now`: its first request's headers are due within the
    /// header timeout.
    pub fn new(now: Instant, header_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            header_timeout,
            idle_timeout,
            phase: Phase::AwaitingHead {
                since: now,
                kept_alive: false,
                first_byte: None,
            },
        }
    }

    /// Bytes came from the client at `now`. Returns whether the deadline moved (the first
    /// byte of a kept-alive connection's next request: from the idle to the header timeout).
    pub fn bytes_read(&mut self, now: Instant) -> bool {
        match &mut self.phase {
            Phase::AwaitingHead {
                kept_alive: true,
                first_byte: first_byte @ None,
                ..
            } => {
                *first_byte = Some(now);
                true
            }
            _ => false,
        }
    }

    /// A request's headers are complete; its handler runs.
    pub fn request_started(&mut self) {
        self.phase = Phase::InRequest;
    }

    /// The response is ready at `now`; the connection may be kept alive for another request.
    pub fn response_ready(&mut self, now: Instant) {
        self.phase = Phase::AwaitingHead {
            since: now,
            kept_alive: true,
            first_byte: None,
        };
    }

    /// When the connection is to be closed, and why; `None` while a request is handled.
    pub fn deadline(&self) -> Option<(Instant, Expiry)> {
        match self.phase {
            Phase::AwaitingHead {
                since,
                kept_alive: false,
                ..
            } => Some((since + self.header_timeout, Expiry::Header)),
            Phase::AwaitingHead {
                first_byte: Some(first),
                ..
            } => Some((first + self.header_timeout, Expiry::Header)),
            Phase::AwaitingHead { since, .. } => Some((since + self.idle_timeout, Expiry::Idle)),
            Phase::InRequest => None,
        }
    }

    /// Why the connection is to be closed at `now`, if its deadline has passed.
    pub fn expired(&self, now: Instant) -> Option<Expiry> {
        self.deadline()
            .and_then(|(at, expiry)| (now >= at).then_some(expiry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(75);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_new_connection_must_complete_its_headers_within_the_header_timeout() {
        let start = Instant::now();
        let mut clock = ConnectionClock::new(start, HEADER, IDLE);
        // Bytes that trickle in do not extend it.
        assert!(!clock.bytes_read(start + secs(9)));
        assert_eq!(clock.deadline(), Some((start + HEADER, Expiry::Header)));
        assert_eq!(clock.expired(start + secs(9)), None);
        assert_eq!(clock.expired(start + HEADER), Some(Expiry::Header));
    }

    #[test]
    fn a_request_being_handled_has_no_connection_deadline() {
        let start = Instant::now();
        let mut clock = ConnectionClock::new(start, HEADER, IDLE);
        clock.request_started();
        assert_eq!(clock.deadline(), None);
        assert_eq!(clock.expired(start + secs(3600)), None);
    }

    #[test]
    fn a_kept_alive_connection_waits_the_idle_timeout_then_the_header_timeout_once_a_request_begins()
     {
        let start = Instant::now();
        let mut clock = ConnectionClock::new(start, HEADER, IDLE);
        clock.request_started();
        let answered = start + secs(1);
        clock.response_ready(answered);
        assert_eq!(clock.deadline(), Some((answered + IDLE, Expiry::Idle)));
        assert_eq!(clock.expired(answered + secs(74)), None);
        assert_eq!(clock.expired(answered + IDLE), Some(Expiry::Idle));

        // The next request's first byte: its headers are due within the header timeout.
        let begun = answered + secs(70);
        assert!(clock.bytes_read(begun), "the deadline moved");
        assert!(
            !clock.bytes_read(begun + secs(1)),
            "only the first byte moves it"
        );
        assert_eq!(clock.deadline(), Some((begun + HEADER, Expiry::Header)));
        assert_eq!(clock.expired(answered + IDLE), None);
        assert_eq!(clock.expired(begun + HEADER), Some(Expiry::Header));
    }
}
