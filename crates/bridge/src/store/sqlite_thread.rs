//! The embedded store's one SQLite connection, owned by one thread that runs the store's work
//! in arrival order.
//!
//! Work that queued up while the thread was busy runs together in one transaction, each piece
//! inside its own savepoint, so a piece that fails undoes only its own changes. The batch is
//! then committed once. A burst of calls thus writes its call-log rows with one commit instead
//! of one each. It also starts no blocking-pool thread per query: before, 100 calls at once
//! queued 100 blocking threads on the connection's lock, on a one-core bridge.
//!
//! Nobody waits to fill a batch: the thread takes what is queued when it looks, so a piece of
//! work that arrives alone runs at once, in a transaction of its own. Either way a piece of work
//! is atomic: one that fails halfway leaves none of its writes, and work the thread cannot
//! guard so is answered with the error instead of run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::StoreError;

/// At most this many pieces of work share a transaction, so that one commit never waits on an
/// unbounded queue.
const MAX_BATCH: usize = 64;

/// Begins a batch's transaction, taking the database's write lock at once (waiting for it up to
/// the connection's busy timeout). With a deferred `BEGIN`, a batch that read before it wrote
/// would fail with `SQLITE_BUSY` whenever another process on the same file (a second bridge) had
/// committed in between: SQLite cannot move a reader's snapshot forward to write. Taking the
/// lock first runs the batches of all processes one after another, so a claim of due reminders
/// sees every claim committed before it. Readers elsewhere are not blocked (WAL).
///
/// A read-only database (`query_only`, a read-only file) cannot give the write lock: its batch
/// begins deferred, so that reads still work and writes fail on their own.
fn begin(connection: &Connection) -> rusqlite::Result<()> {
    match connection.execute_batch("BEGIN IMMEDIATE") {
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.code == rusqlite::ErrorCode::ReadOnly =>
        {
            connection.execute_batch("BEGIN")
        }
        other => other,
    }
}

/// What a piece of work leaves after running: whether it succeeded (its savepoint is kept), and
/// how to hand its result over once the batch's commit is known.
struct Ran {
    succeeded: bool,
    deliver: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// A piece of work with its reply; given an error instead of the connection, it does not run
/// and replies with that error.
type Job = Box<dyn FnOnce(Result<&mut Connection, StoreError>) -> Ran + Send>;

/// The handle to the connection's thread; the thread stops (closing the connection) once every
/// handle is dropped and the queued work is done.
#[derive(Clone)]
pub struct SqliteThread {
    jobs: mpsc::Sender<Job>,
}

impl SqliteThread {
    /// Moves `connection` to a new thread. `to_error` turns SQLite's errors into the store's.
    pub fn start(
        connection: Connection,
        to_error: fn(rusqlite::Error) -> StoreError,
    ) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite".to_owned())
            .spawn(move || serve(connection, queue, to_error))
            .map_err(|err| {
                StoreError::Unavailable(format!("cannot start the store thread: {err}"))
            })?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the connection's thread and waits for its result, committed.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(work, move |result| {
            let _ = reply.send(result);
        })?;
        answer.await.map_err(|_| stopped())?
    }

    /// [`Self::run`] for a caller outside the async runtime (or one that may block briefly).
    pub fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(work, move |result| {
            let _ = reply.send(result);
        })?;
        answer.recv().map_err(|_| stopped())?
    }

    fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        reply: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let job: Job = Box::new(move |connection| {
            let result = connection.and_then(work);
            Ran {
                succeeded: result.is_ok(),
                deliver: Box::new(move |committed| {
                    reply(committed.and(result));
                }),
            }
        });
        self.jobs.send(job).map_err(|_| stopped())
    }
}

/// The work's answer never came: the thread has stopped, or the work panicked.
fn stopped() -> StoreError {
    StoreError::Unavailable("the store's thread gave no answer".to_owned())
}

fn serve(
    mut connection: Connection,
    queue: mpsc::Receiver<Job>,
    to_error: fn(rusqlite::Error) -> StoreError,
) {
    loop {
        // Idle from here on until work arrives: hand the allocator's cache back if the bridge
        // has just gone idle, as the runtime's threads do when they park.
        crate::allocator::on_thread_park();
        let Ok(first) = queue.recv() else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Work that cannot be guarded by a savepoint does not run: it is answered with the error.
        let began = begin(&connection).map_err(to_error);
        let mut ran_all = Vec::with_capacity(batch.len());
        for job in batch {
            ran_all.extend(match &began {
                Ok(()) => run_in_savepoint(&mut connection, job, to_error),
                Err(err) => Some(job(Err(err.clone()))),
            });
        }
        let committed = match began {
            Ok(()) => {
                let committed = connection.execute_batch("COMMIT").map_err(to_error);
                if committed.is_err() {
                    let _ = connection.execute_batch("ROLLBACK");
                }
                committed
            }
            // Nothing ran; each reply already holds the error.
            Err(_) => Ok(()),
        };
        for ran in ran_all {
            (ran.deliver)(committed.clone());
        }
    }
}

/// Runs one piece of work in a savepoint of its own, undone if the work fails. A panic in it
/// loses only its own answer (its caller then hears that the thread gave none), never the thread.
fn run_in_savepoint(
    connection: &mut Connection,
    job: Job,
    to_error: fn(rusqlite::Error) -> StoreError,
) -> Option<Ran> {
    if let Err(err) = connection.execute_batch("SAVEPOINT work") {
        return Some(job(Err(to_error(err))));
    }
    let ran = catch_unwind(AssertUnwindSafe(|| job(Ok(&mut *connection)))).ok();
    let end = if ran.as_ref().is_some_and(|ran| ran.succeeded) {
        "RELEASE work"
    } else {
        "ROLLBACK TO work; RELEASE work"
    };
    let _ = connection.execute_batch(end);
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_error(err: rusqlite::Error) -> StoreError {
        StoreError::Other {
            code: "sqlite".to_owned(),
            message: err.to_string(),
        }
    }

    fn thread_with_table() -> SqliteThread {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        SqliteThread::start(connection, to_error).unwrap()
    }

    fn insert(
        id: i64,
        v: Option<&'static str>,
    ) -> impl FnOnce(&mut Connection) -> Result<usize, StoreError> {
        move |c| {
            c.execute(
                "INSERT INTO t (id, v) VALUES (?1, ?2)",
                rusqlite::params![id, v],
            )
            .map_err(to_error)
        }
    }

    fn rows(thread: &SqliteThread) -> Vec<(i64, String)> {
        thread
            .run_blocking(|c| {
                let mut statement = c
                    .prepare("SELECT id, v FROM t ORDER BY id")
                    .map_err(to_error)?;
                statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(to_error)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(to_error)
            })
            .unwrap()
    }

    #[test]
    fn queued_work_shares_a_commit_and_a_failure_undoes_only_its_own_changes() {
        let thread = thread_with_table();
        // Hold the thread busy so the next pieces queue up and run as one batch.
        let (release, wait) = mpsc::channel::<()>();
        let (started, has_started) = mpsc::channel::<()>();
        let (busy_reply, busy_done) = mpsc::channel();
        thread
            .submit(
                move |_| {
                    started.send(()).unwrap();
                    wait.recv().unwrap();
                    Ok(())
                },
                move |result| busy_reply.send(result).unwrap(),
            )
            .unwrap();
        has_started.recv().unwrap();
        let mut answers = Vec::new();
        for (id, v) in [(1, Some("a")), (2, None), (3, Some("c")), (1, Some("dup"))] {
            let (reply, answer) = mpsc::channel();
            thread
                .submit(insert(id, v), move |result| reply.send(result).unwrap())
                .unwrap();
            answers.push(answer);
        }
        // The second piece writes two rows and then fails: neither row may stay.
        let (reply, partial) = mpsc::channel();
        thread
            .submit(
                |c| {
                    c.execute("INSERT INTO t (id, v) VALUES (10, 'x')", [])
                        .map_err(to_error)?;
                    c.execute("INSERT INTO t (id, v) VALUES (11, NULL)", [])
                        .map_err(to_error)
                },
                move |result| reply.send(result).unwrap(),
            )
            .unwrap();
        release.send(()).unwrap();
        busy_done.recv().unwrap().unwrap();
        let results: Vec<_> = answers.into_iter().map(|a| a.recv().unwrap()).collect();
        assert_eq!(results[0].as_ref().ok(), Some(&1));
        assert!(results[1].is_err(), "NOT NULL is violated");
        assert_eq!(results[2].as_ref().ok(), Some(&1));
        assert!(results[3].is_err(), "the primary key is taken");
        assert!(partial.recv().unwrap().is_err());
        assert_eq!(rows(&thread), [(1, "a".to_owned()), (3, "c".to_owned())]);
    }

    #[test]
    fn a_panicking_piece_of_work_leaves_the_thread_serving() {
        let thread = thread_with_table();
        let error = thread
            .run_blocking(|_| -> Result<(), StoreError> { panic!("a bug in one query") })
            .unwrap_err();
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
        thread.run_blocking(insert(7, Some("after"))).unwrap();
        assert_eq!(rows(&thread), [(7, "after".to_owned())]);
    }

    #[test]
    fn a_batch_holds_the_write_lock_from_its_start_so_no_process_commits_between_its_read_and_write()
     {
        let path = std::env::temp_dir().join(format!("wvb-lock-{}.sqlite3", uuid::Uuid::new_v4()));
        let connection = Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
            )
            .unwrap();
        let thread = SqliteThread::start(connection, to_error).unwrap();
        // Another process's connection, which does not wait for the lock.
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        let other_committed = thread
            .run_blocking(move |c| {
                let count: i64 = c
                    .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
                    .map_err(to_error)?;
                let other_committed = other
                    .execute("INSERT INTO t (id, v) VALUES (100, 'other')", [])
                    .is_ok();
                // What was read is still current: this write goes through.
                c.execute(
                    "INSERT INTO t (id, v) VALUES (?1, 'mine')",
                    rusqlite::params![count + 1],
                )
                .map_err(to_error)?;
                Ok(other_committed)
            })
            .expect("the batch's write succeeds");
        assert!(!other_committed, "the other connection had to wait");
        assert_eq!(rows(&thread), [(1, "mine".to_owned())]);
        drop(thread);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[tokio::test]
    async fn async_callers_get_their_own_results() {
        let thread = thread_with_table();
        let runs = (0..50).map(|id| thread.run(insert(id, Some("v"))));
        let results = futures_util::future::join_all(runs).await;
        assert!(results.iter().all(|r| r.as_ref().ok() == Some(&1)));
        assert_eq!(rows(&thread).len(), 50);
    }
}
