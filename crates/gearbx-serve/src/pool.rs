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
    queue_len: usize,
    aborts: Vec<Arc<AtomicBool>>,
    closing: Arc<AtomicBool>,
    /// The model every worker serves, and its context size.
    pub model: ResolvedModel,
    pub n_ctx: u32,
}

impl Pool {
    /// Opens `workers` sessions with `opts` (one after the other, each in its own thread) and
    /// starts them on a queue of `queue_len` waiting jobs.
    pub fn open(opts: &SessionOptions, workers: usize, queue_len: usize) -> gearbx::Result<Self> {
        let (queue, rx) = sync_channel::<Job>(queue_len);
        let rx = Arc::new(Mutex::new(rx));
        let closing = Arc::new(AtomicBool::new(false));
        let mut aborts = Vec::new();
        let mut opened = None;
        for _ in 0..workers.max(1) {
            let abort = Arc::new(AtomicBool::new(false));
            let o = SessionOptions {
                abort: abort.clone(),
                ..opts.clone()
            };
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (rx, closing) = (rx.clone(), closing.clone());
            let abort_w = abort.clone();
            std::thread::spawn(move || match Session::open(&o) {
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
                Ok(session) => {
                    let _ = ready_tx.send(Ok((session.resolved().clone(), session.n_ctx())));
                    work(session, &rx, &abort_w, &closing);
                }
            });
            let r = ready_rx.recv().map_err(|_| {
                gearbx::Error::InvalidParam("a worker ended while opening its session".into())
            })??;
            opened = Some(r);
            aborts.push(abort);
        }
        let (model, n_ctx) = opened.expect("at least one worker");
        Ok(Self {
            queue,
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
        let result = session.generate(&job.request, |ev: &TokenEvent<'_>| {
            let sent = tx.send(Event::Token {
                text: ev.text.to_string(),
                gear: ev.gear,
                entropy_bits: (ev.token >= 0).then_some(ev.entropy_bits),
                logprobs: ev.logprobs.cloned(),
            });
            if sent.is_err() {
                abort.store(true, Ordering::SeqCst); // nobody is listening: stop
            }
        });
        if closing.load(Ordering::SeqCst) {
            // The session cleared its abort at the start of the job; shutting down keeps it.
            abort.store(true, Ordering::SeqCst);
        }
        let _ = tx.send(match result {
            Ok(o) => Event::Done(Box::new(o)),
            Err(e) => Event::Failed(e),
        });
    }
}
