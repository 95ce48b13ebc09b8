//! Parked long-polls (target P8: ≤ 4 KB each). A live request that finds nothing new does not
//! keep a task, a handler future and HTTP buffers alive while it waits: the handler answers
//! with a [`ParkTicket`] instead of a response, and the connection hands its socket and the
//! request's bytes to this registry and ends its task. One dispatcher task watches every key
//! that has parked requests and wakes all of a key's requests when what they wait on changes,
//! every key that changed at once in one batch (a commit reaching thousands of shapes wakes
//! their requests one after the other in one task, not a task per key); one timer task wakes
//! those whose deadline is due. A woken request is replayed through the router on a new connection task,
//! with its original start time and whatever its handler put in the ticket to carry over
//! (admission slot, metrics guard), so it answers with the new data or, once its time is up,
//! the timeout answer.
//!
//! The registry knows nothing of what is waited on: a [`Waitable`] gives a key (requests on the
//! same key share one watch) and a future for its next change. No wake-up is lost: a request
//! parks only if its waitable has not moved on since the handler looked (checked under the
//! registry lock, with the change future taken at that moment), and a key's change drains its
//! waiters under the same lock after the change it observed.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::{mpsc, Notify};

/// A future that resolves when a waitable changes.
pub type Change = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A key's change, as the dispatcher watches it: the key, or `None` once aborted (its last
/// waiter went).
type Watch = Pin<Box<dyn Future<Output = Option<u64>> + Send>>;

/// Keys woken in one batch at most, before the dispatcher lets other tasks run.
const MAX_BATCH: usize = 1024;

/// A batch of at least this many keys is split in two, each half answered by a task of its
/// own, so both cores write replies (P6, 1,500 requests woken by one commit: ~3 ms sooner).
const SPLIT_BATCH: usize = 128;

/// What a parked request waits on.
pub trait Waitable: Send + Sync + 'static {
    /// Requests with the same key share one watch (a collision only wakes requests early:
    /// they are replayed and park again).
    fn key(&self) -> u64;
    /// A future resolving on the next change after now, or `None` if it has already changed
    /// since the handler looked at it (the request is then replayed at once).
    fn next_change(&self) -> Option<Change>;
}

/// A parked request's own answer to the change that woke it, without a replay through the
/// router: `Some(ready)` is written as the answer (it must be what the replay would answer;
/// the connection adds the request id, length, date and connection headers, as for any
/// ready answer), `None` replays the request as usual. Only called when what it waits on
/// changed (not on a timeout or at shutdown).
pub type Reply = Box<dyn FnOnce() -> Option<crate::shortcut::Ready> + Send>;

/// What a handler hands back instead of waiting: what it waits on, when its wait times out,
/// what the replay carries back to it, and, optionally, how to answer a change directly.
pub struct ParkTicket {
    pub wait: Box<dyn Waitable>,
    pub deadline: Instant,
    pub carry: Option<Box<dyn Any + Send>>,
    pub reply: Option<Reply>,
}

/// Why a parked request was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// What it waits on changed.
    Changed,
    /// Its deadline passed.
    TimedOut,
    /// The registry closed (shutdown), or it could not park.
    Closed,
}

/// Response extension carrying a [`ParkTicket`] (extensions must be `Clone`).
#[derive(Clone)]
pub struct Parked(Arc<Mutex<Option<ParkTicket>>>);

impl Parked {
    pub fn new(ticket: ParkTicket) -> Self {
        Parked(Arc::new(Mutex::new(Some(ticket))))
    }

    pub fn take(&self) -> Option<ParkTicket> {
        lock(&self.0).take()
    }

    /// Put what the replay should carry back (replacing what was there).
    pub fn set_carry(&self, carry: Box<dyn Any + Send>) {
        if let Some(t) = lock(&self.0).as_mut() {
            t.carry = Some(carry);
        }
    }

    /// Set how the request answers a change directly (see [`Reply`]).
    pub fn set_reply(&self, reply: Reply) {
        if let Some(t) = lock(&self.0).as_mut() {
            t.reply = Some(reply);
        }
    }
}

/// Request extension: the connection can park this request.
#[derive(Clone, Copy)]
pub struct Parkable;

/// Request extension on a replayed request: when it first arrived, and what its ticket carried.
#[derive(Clone)]
pub struct Replayed {
    pub since: Instant,
    carry: Arc<Mutex<Option<Box<dyn Any + Send>>>>,
}

impl Replayed {
    pub fn new(since: Instant, carry: Option<Box<dyn Any + Send>>) -> Self {
        Replayed {
            since,
            carry: Arc::new(Mutex::new(carry)),
        }
    }

    /// What the ticket carried, if it is a `T` (taken: a second call gets `None`).
    pub fn take_carry<T: Any>(&self) -> Option<T> {
        let mut carry = lock(&self.carry);
        match carry.take()?.downcast::<T>() {
            Ok(t) => Some(*t),
            Err(other) => {
                *carry = Some(other);
                None
            }
        }
    }
}

/// A parked request: what the connection needs to replay it (`C`), and its ticket's parts.
struct Waiter<C> {
    conn: C,
    key: u64,
    since: Instant,
    carry: Option<Box<dyn Any + Send>>,
    reply: Option<Reply>,
}

/// A waiter taken out of the registry, to be answered or replayed.
pub struct Woken<C> {
    pub conn: C,
    pub since: Instant,
    pub carry: Option<Box<dyn Any + Send>>,
    pub reply: Option<Reply>,
    pub why: Wake,
}

struct Inner<C> {
    next_id: u64,
    waiters: HashMap<u64, Waiter<C>>,
    /// Waiter ids per key, and the abort handle of the key's watch (aborted when its last
    /// waiter times out, so nothing stays subscribed to an idle key).
    by_key: HashMap<u64, (Vec<u64>, AbortHandle)>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    closed: bool,
}

/// The registry of parked requests. `C` is the connection state kept per request.
pub struct Parking<C> {
    inner: Mutex<Inner<C>>,
    /// Wakes the timer task when an earlier deadline arrives (or on close).
    timer: Notify,
    resume: Box<dyn Fn(Woken<C>) + Send + Sync>,
    /// New keys' watches, for the dispatcher.
    watches: mpsc::UnboundedSender<Watch>,
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<C: Send + 'static> Parking<C> {
    /// A registry whose woken requests are handed to `resume` (which spawns their replay).
    pub fn new(resume: impl Fn(Woken<C>) + Send + Sync + 'static) -> Arc<Self> {
        let (watches, new_watches) = mpsc::unbounded_channel();
        let parking = Arc::new(Parking {
            inner: Mutex::new(Inner {
                next_id: 0,
                waiters: HashMap::new(),
                by_key: HashMap::new(),
                deadlines: BinaryHeap::new(),
                closed: false,
            }),
            timer: Notify::new(),
            resume: Box::new(resume),
            watches,
        });
        tokio::spawn(timer_task(Arc::clone(&parking)));
        tokio::spawn(dispatch(Arc::downgrade(&parking), new_watches));
        parking
    }

    /// Park `conn` on the ticket; if what it waits on has moved on since the handler looked (or
    /// the registry is closed, or the deadline passed), it is handed straight back for replay.
    pub fn park(self: &Arc<Self>, conn: C, ticket: ParkTicket, since: Instant) {
        let ParkTicket {
            wait,
            deadline,
            carry,
            reply,
        } = ticket;
        let mut inner = lock(&self.inner);
        // Taken under the lock: a change after this wakes the key's watch.
        let change = wait.next_change();
        let change = match change {
            Some(c) if !inner.closed && deadline > Instant::now() => c,
            _ => {
                drop(inner);
                (self.resume)(Woken {
                    conn,
                    since,
                    carry,
                    reply,
                    why: Wake::Closed,
                });
                return;
            }
        };
        let key = wait.key();
        let id = inner.next_id;
        inner.next_id += 1;
        let earliest = inner.deadlines.peek().map(|Reverse((d, _))| *d);
        inner.deadlines.push(Reverse((deadline, id)));
        match inner.by_key.get_mut(&key) {
            Some((ids, _)) => ids.push(id),
            None => {
                let (abort, registration) = AbortHandle::new_pair();
                let watch = Abortable::new(change, registration).map(move |r| r.ok().map(|()| key));
                // The dispatcher ends only with the registry: the send cannot fail meanwhile.
                let _ = self.watches.send(Box::pin(watch));
                inner.by_key.insert(key, (vec![id], abort));
            }
        }
        inner.waiters.insert(
            id,
            Waiter {
                conn,
                key,
                since,
                carry,
                reply,
            },
        );
        drop(inner);
        if earliest.is_none_or(|e| deadline < e) {
            self.timer.notify_one();
        }
    }

    /// Requests parked now.
    pub fn len(&self) -> usize {
        lock(&self.inner).waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop parking (shutdown): every parked request is replayed now, and later ones are
    /// handed straight back.
    pub fn close(&self) {
        let woken: Vec<Waiter<C>> = {
            let mut inner = lock(&self.inner);
            inner.closed = true;
            for (_, (_, watcher)) in inner.by_key.drain() {
                watcher.abort();
            }
            inner.deadlines.clear();
            inner.waiters.drain().map(|(_, w)| w).collect()
        };
        self.timer.notify_one();
        for w in woken {
            self.wake(w, Wake::Closed);
        }
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.inner).closed
    }

    fn wake(&self, w: Waiter<C>, why: Wake) {
        (self.resume)(Woken {
            conn: w.conn,
            since: w.since,
            carry: w.carry,
            reply: w.reply,
            why,
        });
    }

    /// Hand back every waiter of these keys (what they wait on changed), under one lock.
    fn wake_keys(&self, keys: &[u64]) {
        let woken: Vec<Waiter<C>> = {
            let mut inner = lock(&self.inner);
            let mut woken = Vec::new();
            for key in keys {
                let Some((ids, _watch)) = inner.by_key.remove(key) else {
                    continue;
                };
                woken.extend(ids.into_iter().filter_map(|id| inner.waiters.remove(&id)));
            }
            woken
        };
        for w in woken {
            self.wake(w, Wake::Changed);
        }
    }

    /// Wake the waiters whose deadline has passed, earliest first; returns the next deadline.
    fn wake_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut inner = lock(&self.inner);
            while let Some(Reverse((at, id))) = inner.deadlines.peek().copied() {
                if at > now {
                    break;
                }
                inner.deadlines.pop();
                if let Some(w) = inner.waiters.remove(&id) {
                    if let Some((ids, _)) = inner.by_key.get_mut(&w.key) {
                        ids.retain(|i| *i != id);
                        if ids.is_empty() {
                            if let Some((_, watcher)) = inner.by_key.remove(&w.key) {
                                watcher.abort();
                            }
                        }
                    }
                    due.push(w);
                }
            }
            inner.deadlines.peek().map(|Reverse((at, _))| *at)
        };
        for w in due {
            self.wake(w, Wake::TimedOut);
        }
        next
    }
}

/// Watches every key with parked requests; when keys change, hands back all their waiters, the
/// keys that changed at the same moment in one batch (a later request parking on a woken key
/// starts a new watch). Ends with the registry.
async fn dispatch<C: Send + 'static>(
    parking: std::sync::Weak<Parking<C>>,
    mut new_watches: mpsc::UnboundedReceiver<Watch>,
) {
    let mut watches: FuturesUnordered<Watch> = FuturesUnordered::new();
    let mut changed: Vec<u64> = Vec::new();
    loop {
        tokio::select! {
            biased;
            watch = new_watches.recv() => match watch {
                Some(w) => {
                    watches.push(w);
                    continue;
                }
                None => return,
            },
            Some(key) = watches.next(), if !watches.is_empty() => {
                changed.extend(key);
                // The keys that changed with it, polled without waiting.
                while changed.len() < MAX_BATCH {
                    match watches.next().now_or_never() {
                        Some(Some(key)) => changed.extend(key),
                        _ => break,
                    }
                }
            }
        }
        if !changed.is_empty() {
            let Some(p) = parking.upgrade() else {
                return;
            };
            let full = changed.len() >= MAX_BATCH;
            // A large batch is answered by two tasks, so both cores write replies.
            if changed.len() >= SPLIT_BATCH {
                let half = changed.split_off(changed.len() / 2);
                let other = Arc::clone(&p);
                tokio::spawn(async move { other.wake_keys(&half) });
            }
            p.wake_keys(&changed);
            changed.clear();
            if full {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Replays requests whose deadline is due; ends when the registry closes.
async fn timer_task<C: Send + 'static>(parking: Arc<Parking<C>>) {
    loop {
        let notified = parking.timer.notified();
        tokio::pin!(notified);
        // Enabled before looking, so a park that sets an earlier deadline meanwhile wakes us.
        notified.as_mut().enable();
        let next = parking.wake_due();
        if parking.is_closed() {
            return;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::{mpsc, watch};

    /// Waits on a watch channel's value: moved on once it differs from `observed`.
    struct Counter {
        key: u64,
        rx: watch::Receiver<u64>,
        observed: u64,
    }

    impl Waitable for Counter {
        fn key(&self) -> u64 {
            self.key
        }
        fn next_change(&self) -> Option<Change> {
            let mut rx = self.rx.clone();
            if *rx.borrow_and_update() != self.observed {
                return None;
            }
            Some(Box::pin(async move {
                let _ = rx.changed().await;
            }))
        }
    }

    fn registry() -> (
        Arc<Parking<&'static str>>,
        mpsc::UnboundedReceiver<&'static str>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let parking = Parking::new(move |w: Woken<&'static str>| {
            let _ = tx.send(w.conn);
        });
        (parking, rx)
    }

    fn ticket(key: u64, rx: &watch::Receiver<u64>, observed: u64, wait: Duration) -> ParkTicket {
        ParkTicket {
            wait: Box::new(Counter {
                key,
                rx: rx.clone(),
                observed,
            }),
            deadline: Instant::now() + wait,
            carry: None,
            reply: None,
        }
    }

    #[tokio::test]
    async fn a_change_wakes_every_waiter_of_its_key_and_no_other() {
        let (parking, mut woken) = registry();
        let (a_tx, a_rx) = watch::channel(0);
        let (_b_tx, b_rx) = watch::channel(0);
        let long = Duration::from_secs(60);
        parking.park("a1", ticket(1, &a_rx, 0, long), Instant::now());
        parking.park("a2", ticket(1, &a_rx, 0, long), Instant::now());
        parking.park("b", ticket(2, &b_rx, 0, long), Instant::now());
        assert_eq!(parking.len(), 3);
        a_tx.send_replace(1);
        let mut got = vec![woken.recv().await.unwrap(), woken.recv().await.unwrap()];
        got.sort_unstable();
        assert_eq!(got, ["a1", "a2"]);
        assert_eq!(parking.len(), 1);
        assert!(woken.try_recv().is_err());
    }

    #[tokio::test]
    async fn no_wake_up_is_lost_when_the_change_came_before_parking() {
        let (parking, mut woken) = registry();
        let (tx, rx) = watch::channel(0);
        // The handler looked at 0; it changed before the connection parked.
        tx.send_replace(1);
        parking.park(
            "late",
            ticket(1, &rx, 0, Duration::from_secs(60)),
            Instant::now(),
        );
        assert_eq!(woken.recv().await.unwrap(), "late");
        assert!(parking.is_empty());
    }

    #[tokio::test]
    async fn deadlines_wake_in_their_order_and_idle_keys_keep_no_watcher() {
        let (parking, mut woken) = registry();
        let (tx, rx) = watch::channel(0);
        parking.park(
            "third",
            ticket(1, &rx, 0, Duration::from_millis(120)),
            Instant::now(),
        );
        parking.park(
            "first",
            ticket(2, &rx, 0, Duration::from_millis(20)),
            Instant::now(),
        );
        parking.park(
            "second",
            ticket(1, &rx, 0, Duration::from_millis(60)),
            Instant::now(),
        );
        for want in ["first", "second", "third"] {
            assert_eq!(woken.recv().await.unwrap(), want);
        }
        assert!(lock(&parking.inner).by_key.is_empty());
        // The keys' watches are dropped with their last waiter: nothing stays subscribed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tx.receiver_count() > 1 {
            assert!(Instant::now() < deadline, "a watch outlived its waiters");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn close_replays_every_waiter_and_refuses_new_ones() {
        let (parking, mut woken) = registry();
        let (_tx, rx) = watch::channel(0);
        parking.park(
            "x",
            ticket(1, &rx, 0, Duration::from_secs(60)),
            Instant::now(),
        );
        parking.park(
            "y",
            ticket(2, &rx, 0, Duration::from_secs(60)),
            Instant::now(),
        );
        parking.close();
        let mut got = vec![woken.recv().await.unwrap(), woken.recv().await.unwrap()];
        got.sort_unstable();
        assert_eq!(got, ["x", "y"]);
        parking.park(
            "z",
            ticket(3, &rx, 0, Duration::from_secs(60)),
            Instant::now(),
        );
        assert_eq!(woken.recv().await.unwrap(), "z");
        assert!(parking.is_empty() && parking.is_closed());
    }

    #[tokio::test]
    async fn the_replay_carries_what_the_ticket_carried() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let parking = Parking::new(move |w: Woken<()>| {
            let _ = tx.send(Replayed::new(w.since, w.carry));
        });
        let (_wtx, wrx) = watch::channel(0);
        let mut t = ticket(1, &wrx, 0, Duration::from_millis(10));
        t.carry = Some(Box::new(42u32));
        parking.park((), t, Instant::now());
        let replayed = rx.recv().await.unwrap();
        assert_eq!(replayed.take_carry::<String>(), None, "another type stays");
        assert_eq!(replayed.take_carry::<u32>(), Some(42));
        assert_eq!(replayed.take_carry::<u32>(), None, "taken once");
    }
}
