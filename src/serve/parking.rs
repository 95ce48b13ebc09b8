//! Parked long-polls (target P8: ≤ 4 KB each). A live request that finds nothing new does not keep
//! a task, a handler future and HTTP buffers alive while it waits: the handler answers with a
//! [`ParkTicket`] instead of a response, and the connection ([`super::http1`]) hands its socket and
//! the request's bytes to this registry and ends its task. One watcher task per shape that has
//! parked requests wakes them all when the shape's durable progress changes; one timer task wakes
//! those whose long-poll timeout is due. A woken request is replayed through the router on a new
//! connection task, with its original start time, so it answers with the new data or, once its
//! time is up, the up-to-date timeout answer.
//!
//! No wake-up is lost: a request parks only if the shape's progress still equals what its handler
//! read (checked under the registry lock), and a shape's watcher drains its waiters under the same
//! lock after each change it observes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use super::admission::Admitted;
use crate::metrics::ActiveGuard;
use crate::shape::definition::ShapeHandle;
use crate::shape::{Progress, Shape};

/// What a handler hands back instead of waiting: the shape it waits on, the progress it saw,
/// when its long-poll times out, and its admission slot (a parked request stays admitted).
pub struct ParkTicket {
    pub shape: Arc<Shape>,
    pub observed: Progress,
    pub deadline: Instant,
    pub admitted: Option<Admitted>,
    /// Counts the request in the parked-requests gauge while it waits.
    pub gauge: ActiveGuard,
}

/// Response extension carrying a [`ParkTicket`] (extensions must be `Clone`).
#[derive(Clone)]
pub struct Parked(pub Arc<Mutex<Option<ParkTicket>>>);

impl Parked {
    pub fn new(ticket: ParkTicket) -> Self {
        Parked(Arc::new(Mutex::new(Some(ticket))))
    }

    pub fn take(&self) -> Option<ParkTicket> {
        lock(&self.0).take()
    }

    pub fn set_admitted(&self, admitted: Admitted) {
        if let Some(t) = lock(&self.0).as_mut() {
            t.admitted = Some(admitted);
        }
    }
}

/// Request extension: the connection can park this request.
#[derive(Clone, Copy)]
pub struct Parkable;

/// Request extension on a replayed request: when it first arrived, and its admission slot.
#[derive(Clone)]
pub struct Replayed {
    pub since: Instant,
    pub admitted: Arc<Mutex<Option<Admitted>>>,
}

impl Replayed {
    pub fn take_admitted(&self) -> Option<Admitted> {
        lock(&self.admitted).take()
    }
}

/// A parked request: whatever the connection needs to replay it later (`T`), plus its ticket.
struct Waiter<T> {
    conn: T,
    shape: Arc<Shape>,
    since: Instant,
    admitted: Option<Admitted>,
    _gauge: ActiveGuard,
}

/// A waiter taken out of the registry, to be replayed.
pub struct Woken<T> {
    pub conn: T,
    pub since: Instant,
    pub admitted: Option<Admitted>,
}

struct Inner<T> {
    next_id: u64,
    waiters: HashMap<u64, Waiter<T>>,
    /// Waiter ids per shape, and the shape's watcher task (aborted when its last waiter times
    /// out, so an idle shape holds no subscription: see `Shape::has_waiters`).
    by_shape: HashMap<ShapeHandle, (Vec<u64>, tokio::task::JoinHandle<()>)>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    closed: bool,
}

/// The registry of parked requests. `T` is the connection state kept per request.
pub struct Parking<T> {
    inner: Mutex<Inner<T>>,
    /// Wakes the timer task when an earlier deadline arrives (or on close).
    timer: Notify,
    resume: Box<dyn Fn(Woken<T>) + Send + Sync>,
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Send + 'static> Parking<T> {
    /// A registry whose woken requests are handed to `resume` (which spawns their replay).
    pub fn new(resume: impl Fn(Woken<T>) + Send + Sync + 'static) -> Arc<Self> {
        let parking = Arc::new(Parking {
            inner: Mutex::new(Inner {
                next_id: 0,
                waiters: HashMap::new(),
                by_shape: HashMap::new(),
                deadlines: BinaryHeap::new(),
                closed: false,
            }),
            timer: Notify::new(),
            resume: Box::new(resume),
        });
        tokio::spawn(timer_task(Arc::clone(&parking)));
        parking
    }

    /// Park `conn` on the ticket's shape; if the shape has moved on since the handler looked (or
    /// the registry is closed), it is handed straight back for replay.
    pub fn park(self: &Arc<Self>, conn: T, ticket: ParkTicket, since: Instant) {
        let ParkTicket {
            shape,
            observed,
            deadline,
            admitted,
            gauge,
        } = ticket;
        let mut inner = lock(&self.inner);
        // Subscribed before the comparison: a change after it wakes the watcher.
        let rx = shape.subscribe();
        let moved_on = rx.current() != observed;
        if inner.closed || moved_on || deadline <= Instant::now() {
            drop(inner);
            (self.resume)(Woken {
                conn,
                since,
                admitted,
            });
            return;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let earliest = inner.deadlines.peek().map(|Reverse((d, _))| *d);
        inner.deadlines.push(Reverse((deadline, id)));
        match inner.by_shape.get_mut(&shape.handle) {
            Some((ids, _)) => ids.push(id),
            None => {
                let watcher =
                    tokio::spawn(watch_shape(Arc::downgrade(self), shape.handle.clone(), rx));
                inner
                    .by_shape
                    .insert(shape.handle.clone(), (vec![id], watcher));
            }
        }
        inner.waiters.insert(
            id,
            Waiter {
                conn,
                shape,
                since,
                admitted,
                _gauge: gauge,
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

    /// Stop parking (shutdown): every parked request is replayed now, and later ones wait in
    /// their own task, where they see the shutdown.
    pub fn close(&self) {
        let woken: Vec<Waiter<T>> = {
            let mut inner = lock(&self.inner);
            inner.closed = true;
            for (_, (_, watcher)) in inner.by_shape.drain() {
                watcher.abort();
            }
            inner.deadlines.clear();
            inner.waiters.drain().map(|(_, w)| w).collect()
        };
        self.timer.notify_one();
        for w in woken {
            self.wake(w);
        }
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.inner).closed
    }

    fn wake(&self, w: Waiter<T>) {
        drop(w.shape);
        (self.resume)(Woken {
            conn: w.conn,
            since: w.since,
            admitted: w.admitted,
        });
    }

    /// Replay every waiter of a shape (its progress changed).
    fn wake_shape(&self, handle: &ShapeHandle) {
        let woken: Vec<Waiter<T>> = {
            let mut inner = lock(&self.inner);
            let Some((ids, _watcher)) = inner.by_shape.remove(handle) else {
                return;
            };
            ids.into_iter()
                .filter_map(|id| inner.waiters.remove(&id))
                .collect()
        };
        for w in woken {
            self.wake(w);
        }
    }

    /// Wake the waiters whose deadline has passed; returns the next deadline.
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
                    let handle = &w.shape.handle;
                    if let Some((ids, _)) = inner.by_shape.get_mut(handle) {
                        ids.retain(|i| *i != id);
                        if ids.is_empty() {
                            if let Some((_, watcher)) = inner.by_shape.remove(handle) {
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
            self.wake(w);
        }
        next
    }
}

/// One per shape with parked requests: on the shape's next change, replay all of them (a later
/// request parking on the shape starts a new watcher).
async fn watch_shape<T: Send + 'static>(
    parking: std::sync::Weak<Parking<T>>,
    handle: ShapeHandle,
    mut rx: crate::shape::progress::ProgressRx,
) {
    // An error means the shape itself is gone: its waiters replay too (and get 409).
    let _ = rx.changed().await;
    if let Some(p) = parking.upgrade() {
        p.wake_shape(&handle);
    }
}

/// Replays requests whose long-poll timeout is due; ends when the registry closes.
async fn timer_task<T: Send + 'static>(parking: Arc<Parking<T>>) {
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
