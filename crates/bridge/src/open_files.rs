//! The process's limit of open files, raised at start to its hard limit, so that the HTTP
//! listeners' connection cap, not the kernel, is what turns clients away first.

use nix::sys::resource::{Resource, getrlimit, rlim_t, setrlimit};

/// The soft limit of open files before and after [`raise_to_hard_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFilesLimit {
    pub before: rlim_t,
    pub after: rlim_t,
}

/// Raises the soft limit of open files to the hard one (allowed without privileges).
pub fn raise_to_hard_limit() -> nix::Result<OpenFilesLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (after, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(OpenFilesLimit {
        before: soft,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let limit = raise_to_hard_limit().expect("raised");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("read");
        assert_eq!((limit.after, soft), (hard, hard));
        assert!(limit.before <= limit.after);
    }
}
