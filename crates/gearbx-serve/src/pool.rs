//! The generation workers: N threads, each owning one session (a session is one model, one
//! context), fed from one bounded queue. A job streams its events back on its own channel; a
//! job whose receiver is gone (the client disconnected) is stopped through its session's abort
//! flag, and closing the pool stops every running job the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use gearbx::engine::logprobs::Logprobs;
use gearbx::engine::{Outcome, TokenEvent};
use gearbx::gearbox::Gear;
use gearbx::session::{Request, Session, SessionOptions};
use gearbx::store::ResolvedModel;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// What a running job reports.
pub enum Event {
    /// Text that became visible, with the gear telemetry of its token (None: text released at
    /// the end, without a token of its own).
    Token {
        text: String,
        gear: Option<Gear>,
        entropy_bits: Option<f32>,
        /// When the request asked for log-probabilities.
        logprobs: Option<Logprobs>,
    },
    Done(Box<Outcome>),
    Failed(gearbx::Error),
}

struct Job {
    request: Request,
    events: UnboundedSender<Event>,
}

/// Why a job was not taken.
pub enum Refused {
    /// The queue holds its maximum of waiting jobs.
    Busy(usize),
    /// The server is shutting down.
    Closing,
}

pub struct Pool {
    queue: SyncSender<Job>,
    workers: Vec<std::thread::JoinHandle<()>>,
    queue_len: usize,
    aborts: Vec<Arc<AtomicBool>>,
    closing: Arc<AtomicBool>,
    /// The model every worker serves, and its context size.
    pub model: ResolvedModel,
    pub n_ctx: u32,
}

/// Waits for a job's first event: a job refused by the session (a prompt too long for the
/// context, a bad value) fails before any text, and the reply can still be an HTTP error
/// instead of a stream that starts with 200.
pub async fn first_event(events: &mut UnboundedReceiver<Event>) -> Result<Event, gearbx::Error> {
    match events.recv().await {
        Some(Event::Failed(e)) => Err(e),
        Some(ev) => Ok(ev),
        None => Err(gearbx::Error::Interrupted),
    }
}

impl Pool {
    /// Opens `workers` sessions with `opts` (one after the other, each in its own thread) and
    /// starts them on a queue of `queue_len` waiting jobs.
    pub fn open(opts: &SessionOptions, n_workers: usize, queue_len: usize) -> gearbx::Result<Self> {
        let (queue, rx) = sync_channel::<Job>(queue_len);
        let rx = Arc::new(Mutex::new(rx));
        let closing = Arc::new(AtomicBool::new(false));
        let mut aborts = Vec::new();
        let mut workers = Vec::new();
        let mut opened = None;
        for _ in 0..n_workers.max(1) {
            let abort = Arc::new(AtomicBool::new(false));
            let o = SessionOptions {
                abort: abort.clone(),
                ..opts.clone()
            };
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (rx, closing) = (rx.clone(), closing.clone());
            let abort_w = abort.clone();
            let handle = std::thread::spawn(move || match Session::open(&o) {
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
                Ok(session) => {
                    let _ = ready_tx.send(Ok((session.resolved().clone(), session.n_ctx())));
                    work(session, &rx, &abort_w, &closing);
                }
            });
            workers.push(handle);
            let r = ready_rx.recv().map_err(|_| {
                gearbx::Error::InvalidParam("a worker ended while opening its session".into())
            })??;
            opened = Some(r);
            aborts.push(abort);
        }
        let (model, n_ctx) = opened.expect("at least one worker");
        Ok(Self {
            queue,
            workers,
            queue_len,
            aborts,
            closing,
            model,
            n_ctx,
        })
    }

    /// Queues `request`; its events arrive on the returned channel, ending with `Done` or
    /// `Failed`. Dropping the receiver cancels the job.
    pub fn submit(&self, request: Request) -> Result<UnboundedReceiver<Event>, Refused> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(Refused::Closing);
        }
        let (events, rx) = unbounded_channel();
        match self.queue.try_send(Job { request, events }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(Refused::Busy(self.queue_len)),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Closing),
        }
    }

    /// Refuses new jobs and stops the running ones (they end with what they generated).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for a in &self.aborts {
            a.store(true, Ordering::SeqCst);
        }
    }

    /// Closes the pool and waits for every worker to leave llama.cpp and end.
    pub fn join(self) {
        self.close();
        let Pool { queue, workers, .. } = self;
        drop(queue); // workers waiting for a job see the queue closed
        for w in workers {
            let _ = w.join();
        }
    }
}

fn work(mut session: Session, rx: &Mutex<Receiver<Job>>, abort: &AtomicBool, closing: &AtomicBool) {
    loop {
        // One worker waits on the queue at a time; the others wait for the lock.
        let job = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return; // the pool is gone
        };
        if closing.load(Ordering::SeqCst) {
            let _ = job.events.send(Event::Failed(gearbx::Error::Interrupted));
            continue;
        }
        let tx = job.events;
        let on_token = |ev: &TokenEvent<'_>| {
            let sent = tx.send(Event::Token {
                text: ev.text.to_string(),
                gear: ev.gear,
                entropy_bits: (ev.token >= 0).then_some(ev.entropy_bits),
                logprobs: ev.logprobs.cloned(),
            });
            // Nobody listening, or the server closing (generate cleared the abort flag when it
            // started, so a close() just before that is caught here): stop.
            if sent.is_err() || closing.load(Ordering::SeqCst) {
                abort.store(true, Ordering::SeqCst);
            }
        };
        // A panic (a bug) fails this request, not every later one.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            session.generate(&job.request, on_token)
        }))
        .unwrap_or_else(|_| {
            Err(gearbx::Error::Llama(
                "internal error while generating (a bug in gearbx)".into(),
            ))
        });
        let _ = tx.send(match result {
            Ok(o) => Event::Done(Box::new(o)),
            Err(e) => Event::Failed(e),
        });
    }
}
