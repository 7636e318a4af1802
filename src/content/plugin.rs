//! The content plugin (`io.containerd.content.v1.content`): blob files under the plugin's
//! root, rows in the metadata database. Provides [`Store`].

use std::sync::Arc;

use super::store::Store;
use crate::metadata::Db;
use crate::plugin::{InitContext, Instance, PluginError, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

fn registration() -> Registration {
    Registration::new(PluginType::Content, ids::CONTENT, init).requires(&[PluginType::Metadata])
}

async fn init(cx: InitContext) -> Result<Instance, PluginError> {
    let db = cx.get::<Db>()?;
    let root = cx.root().to_owned();
    let store = crate::blocking::try_run("open", move || Store::open(db, &root))
        .await
        .map_err(PluginError::init)?;
    Ok(Instance::new()
        .with::<Store>(store.clone())
        .export("root", cx.root().display().to_string()))
}

/// Shorthand used by other plugins.
pub type SharedStore = Arc<Store>;
