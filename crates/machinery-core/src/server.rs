//! [`Server`]: the task registry and the sending side (tasks, groups, chords, chains).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::task::{Task, TaskHandler, TaskOptions};
use crate::workflow::{AsyncResult, Chain, ChainAsyncResult, Chord, ChordAsyncResult, Group};
use crate::{Backend, Broker, Config, Error, Lock, Result, Signature, TaskState};

type PrePublishHook = dyn Fn(&mut Signature) + Send + Sync;

pub(crate) struct ServerInner {
    pub(crate) config: Config,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) lock: RwLock<Arc<dyn Lock>>,
    tasks: RwLock<HashMap<String, Task>>,
    pre_publish: RwLock<Option<Arc<PrePublishHook>>>,
    /// Cancelled when the last `Server` handle is dropped: stops periodic schedulers.
    pub(crate) shutdown: CancellationToken,
}

impl Drop for ServerInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The entry point: registers tasks, sends work, makes workers.
///
/// Cheap to clone (an `Arc` inside); every clone shares the registry.
///
/// # Examples
///
/// ```
/// use machinery_core::{Config, MemoryBackend, MemoryBroker, Server, Signature};
///
/// async fn add(a: i64, b: i64) -> Result<i64, String> {
///     Ok(a + b)
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> machinery_core::Result<()> {
/// let server = Server::new(Config::default(), MemoryBroker::new(), MemoryBackend::new());
/// server.register_task("add", add)?;
/// let worker = server.new_worker("doc", 1).no_unix_signals().launch();
/// let result = server.send_task(Signature::new("add").arg(1i64).arg(2i64)).await?;
/// let sum: i64 = result.get_as(std::time::Duration::from_secs(5)).await?;
/// assert_eq!(sum, 3);
/// worker.quit();
/// worker.join().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<ServerInner>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.inner.config)
            .field("broker", &self.inner.broker.driver())
            .field("backend", &self.inner.backend.driver())
            .field("tasks", &self.registered_task_names())
            .finish()
    }
}

/// Anything that can become an `Arc<dyn Broker>`: a broker value or an existing `Arc`.
pub trait IntoBroker {
    /// Convert.
    fn into_broker(self) -> Arc<dyn Broker>;
}

impl<B: Broker> IntoBroker for B {
    fn into_broker(self) -> Arc<dyn Broker> {
        Arc::new(self)
    }
}

impl IntoBroker for Arc<dyn Broker> {
    fn into_broker(self) -> Arc<dyn Broker> {
        self
    }
}

/// Anything that can become an `Arc<dyn Backend>`.
pub trait IntoBackend {
    /// Convert.
    fn into_backend(self) -> Arc<dyn Backend>;
}

impl<B: Backend> IntoBackend for B {
    fn into_backend(self) -> Arc<dyn Backend> {
        Arc::new(self)
    }
}

impl IntoBackend for Arc<dyn Backend> {
    fn into_backend(self) -> Arc<dyn Backend> {
        self
    }
}

impl Server {
    /// A server on `broker` and `backend`. Periodic tasks use an in-process lock until
    /// [`Server::set_lock`] gives a distributed one.
    pub fn new(config: Config, broker: impl IntoBroker, backend: impl IntoBackend) -> Self {
        Server {
            inner: Arc::new(ServerInner {
                config,
                broker: broker.into_broker(),
                backend: backend.into_backend(),
                lock: RwLock::new(Arc::new(crate::MemoryLock::new())),
                tasks: RwLock::new(HashMap::new()),
                pre_publish: RwLock::new(None),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// The result backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Use `lock` so that only one server sends each periodic task per tick.
    pub fn set_lock(&self, lock: Arc<dyn Lock>) {
        *self.inner.lock.write().expect("lock poisoned") = lock;
    }

    /// Register an async function as task `name`. Its parameters (after an optional
    /// [`crate::TaskContext`]) must be supported types (`i64`, `String`, `Vec<f64>`, ...);
    /// this is checked at compile time. Registering a name again replaces the task.
    ///
    /// # Errors
    /// [`Error::Config`] when `name` is empty.
    pub fn register_task<M, H: TaskHandler<M>>(&self, name: &str, handler: H) -> Result<()> {
        self.register(name, Task::new(handler))
    }

    /// Register a task with options (time limit, ...).
    ///
    /// # Errors
    /// [`Error::Config`] when `name` is empty.
    pub fn register_task_with<M, H: TaskHandler<M>>(
        &self,
        name: &str,
        handler: H,
        options: TaskOptions,
    ) -> Result<()> {
        self.register(name, Task::new(handler).with_options(options))
    }

    /// Register several tasks made with [`crate::task()`].
    ///
    /// # Errors
    /// [`Error::Config`] when a name is empty; nothing is registered then.
    pub fn register_tasks<I, S>(&self, tasks: I) -> Result<()>
    where
        I: IntoIterator<Item = (S, Task)>,
        S: Into<String>,
    {
        let tasks: Vec<(String, Task)> = tasks.into_iter().map(|(n, t)| (n.into(), t)).collect();
        if tasks.iter().any(|(n, _)| n.is_empty()) {
            return Err(Error::config("task name", "must not be empty"));
        }
        let mut map = self.inner.tasks.write().expect("registry poisoned");
        map.extend(tasks);
        Ok(())
    }

    fn register(&self, name: &str, task: Task) -> Result<()> {
        if name.is_empty() {
            return Err(Error::config("task name", "must not be empty"));
        }
        self.inner
            .tasks
            .write()
            .expect("registry poisoned")
            .insert(name.to_owned(), task);
        Ok(())
    }

    /// Whether a task of this name is registered.
    pub fn is_task_registered(&self, name: &str) -> bool {
        self.inner
            .tasks
            .read()
            .expect("registry poisoned")
            .contains_key(name)
    }

    /// The registered names, sorted.
    pub fn registered_task_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .tasks
            .read()
            .expect("registry poisoned")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    pub(crate) fn task(&self, name: &str) -> Option<Task> {
        self.inner
            .tasks
            .read()
            .expect("registry poisoned")
            .get(name)
            .cloned()
    }

    /// Called with every signature right before it is published (after UUID and routing
    /// key are filled in).
    pub fn set_pre_publish_handler(&self, hook: impl Fn(&mut Signature) + Send + Sync + 'static) {
        *self.inner.pre_publish.write().expect("hook poisoned") = Some(Arc::new(hook));
    }

    /// Fill what Go fills before publishing: UUID, routing key, headers, trace context; then
    /// check what can be checked before anything is stored (names, size).
    fn prepare(&self, sig: &mut Signature) -> Result<()> {
        sig.check_names()
            .map_err(|reason| Error::config("task name", format!("must not be empty: {reason}")))?;
        if sig.uuid.is_empty() {
            sig.uuid = crate::new_task_uuid();
        }
        if sig.routing_key.is_empty() {
            sig.routing_key = self.inner.broker.default_routing_key();
        }
        crate::trace::inject(sig.headers.get_or_insert_with(Default::default));
        let hook = self
            .inner
            .pre_publish
            .read()
            .expect("hook poisoned")
            .clone();
        if let Some(hook) = hook {
            hook(sig);
            sig.check_names().map_err(|reason| {
                Error::config("task name", format!("must not be empty: {reason}"))
            })?;
        }
        self.check_size(sig)
    }

    /// The broker's size limit, checked before anything is stored.
    fn check_size(&self, sig: &Signature) -> Result<()> {
        if let Some(limit) = self.inner.broker.capabilities().max_message_bytes {
            let size = sig.to_json()?.len();
            if size > limit {
                return Err(Error::TooLarge {
                    what: "task message",
                    size,
                    limit,
                });
            }
        }
        Ok(())
    }

    /// Publish a task whose PENDING state is stored; if the broker refuses it, store FAILURE
    /// with the broker's error so that nobody waits for a task that does not exist.
    async fn publish_stored(&self, sig: &Signature) -> Result<()> {
        let Err(e) = self.inner.broker.publish(sig).await else {
            return Ok(());
        };
        let text = format!("the task could not be sent: {e}");
        tracing::error!(uuid = %sig.uuid, name = %sig.name, error = %e, "publish failed after PENDING was stored; storing FAILURE");
        if let Err(e2) = self
            .inner
            .backend
            .set_state(&TaskState::failure(sig, &text))
            .await
        {
            tracing::error!(uuid = %sig.uuid, error = %e2, "cannot store FAILURE for a task that was not sent; its state stays PENDING");
        }
        Err(e)
    }

    /// Send one task: check it, store PENDING, then publish (as Go does). A task the broker
    /// refuses ends FAILURE with the broker's error.
    ///
    /// # Errors
    /// When the backend or the broker fails; [`Error::TooLarge`] when the message is over the
    /// broker's limit (nothing is stored then); [`Error::Config`] when a signature in it has
    /// no task name.
    pub async fn send_task(&self, mut sig: Signature) -> Result<AsyncResult> {
        self.prepare(&mut sig)?;
        self.inner
            .backend
            .set_state(&TaskState::pending(&sig))
            .await?;
        self.publish_stored(&sig).await?;
        Ok(AsyncResult::new(sig, Arc::clone(&self.inner.backend)))
    }

    /// Send a group: record it, store PENDING for every member, then publish with at most
    /// `send_concurrency` publishes in flight (0 = unlimited).
    ///
    /// # Errors
    /// The first backend or broker error.
    pub async fn send_group(
        &self,
        group: Group,
        send_concurrency: usize,
    ) -> Result<Vec<AsyncResult>> {
        let mut tasks = group.tasks;
        for t in &mut tasks {
            self.prepare(t)?;
        }
        let uuids: Vec<String> = tasks.iter().map(|t| t.uuid.clone()).collect();
        self.inner
            .backend
            .init_group(&group.group_uuid, &uuids)
            .await?;
        let limit = if send_concurrency == 0 {
            tasks.len().max(1)
        } else {
            send_concurrency
        };
        let states: Vec<TaskState> = tasks.iter().map(TaskState::pending).collect();
        let backend = Arc::clone(&self.inner.backend);
        futures::stream::iter(states)
            .map(move |st| {
                let backend = Arc::clone(&backend);
                async move { backend.set_state(&st).await }
            })
            .buffer_unordered(limit)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<()>>>()?;
        let server = self.clone();
        futures::stream::iter(tasks.clone())
            .map(move |t| {
                let server = server.clone();
                async move { server.publish_stored(&t).await }
            })
            .buffer_unordered(limit)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<()>>>()?;
        Ok(tasks
            .into_iter()
            .map(|t| AsyncResult::new(t, Arc::clone(&self.inner.backend)))
            .collect())
    }

    /// Send a chord: its group as [`Server::send_group`]; the callback is sent by the worker
    /// that completes the group.
    ///
    /// # Errors
    /// As [`Server::send_group`].
    pub async fn send_chord(
        &self,
        chord: Chord,
        send_concurrency: usize,
    ) -> Result<ChordAsyncResult> {
        let group = self.send_group(chord.group, send_concurrency).await?;
        Ok(ChordAsyncResult {
            group,
            callback: AsyncResult::new(chord.callback, Arc::clone(&self.inner.backend)),
        })
    }

    /// Send a chain: only its head is published; the rest follows on success.
    ///
    /// # Errors
    /// As [`Server::send_task`].
    pub async fn send_chain(&self, chain: Chain) -> Result<ChainAsyncResult> {
        // One handle per link, each without the rest of the chain: cloning every link with
        // its tail would be quadratic in the chain's length.
        let mut sigs = Vec::with_capacity(chain.task_uuids.len());
        let mut cur = Some(&chain.head);
        while let Some(s) = cur {
            sigs.push(s.without_follow_ups());
            cur = s.on_success.first();
        }
        self.send_task(chain.head).await?;
        let backend = &self.inner.backend;
        Ok(ChainAsyncResult {
            results: sigs
                .into_iter()
                .map(|s| AsyncResult::new(s, Arc::clone(backend)))
                .collect(),
        })
    }

    /// A worker consuming the default queue with at most `concurrency` tasks at once
    /// (0 = unlimited, 1 = serial).
    pub fn new_worker(&self, tag: impl Into<String>, concurrency: usize) -> crate::Worker {
        crate::Worker::new(self.clone(), tag.into(), concurrency, None)
    }

    /// A worker consuming `queue` instead of the default queue.
    pub fn new_custom_queue_worker(
        &self,
        tag: impl Into<String>,
        concurrency: usize,
        queue: impl Into<String>,
    ) -> crate::Worker {
        crate::Worker::new(self.clone(), tag.into(), concurrency, Some(queue.into()))
    }
}
