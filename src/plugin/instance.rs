use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A shutdown hook: run once, in reverse init order, bounded by the registry's timeout.
pub type ShutdownFn = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What an initialized plugin provides: one or more typed capabilities, each an `Arc<T>`
/// (usually `Arc<dyn Trait>`), plus an optional shutdown hook and exports for introspection.
#[derive(Default)]
pub struct Instance {
    capabilities: HashMap<TypeId, (&'static str, Box<dyn Any + Send + Sync>)>,
    pub(super) shutdown: Option<ShutdownFn>,
    pub(super) exports: Vec<(String, String)>,
}

impl Instance {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a capability. `T` is usually a trait object: `with::<dyn MetadataStore>(store)`.
    pub fn with<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.capabilities.insert(
            TypeId::of::<Arc<T>>(),
            (std::any::type_name::<T>(), Box::new(value)),
        );
        self
    }

    /// Sets the shutdown hook.
    pub fn on_shutdown<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shutdown = Some(Box::new(move || Box::pin(f())));
        self
    }

    /// Adds a key/value shown by introspection (`ctr plugins ls -d`).
    pub fn export(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.exports.push((key.into(), value.into()));
        self
    }

    /// The single downcast in the registry: the map is keyed by `TypeId::of::<Arc<T>>()`,
    /// so the value under that key is an `Arc<T>`.
    pub(super) fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.capabilities
            .get(&TypeId::of::<Arc<T>>())
            .and_then(|(_, b)| b.downcast_ref::<Arc<T>>())
            .cloned()
    }

    pub(super) fn capability_names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.capabilities.values().map(|(n, _)| *n).collect();
        v.sort_unstable();
        v
    }
}
