//! Handlers: the [`Loader`] that turns a folder of components into a [`PluginSet`], each
//! handler's [`Manifest`] and [`PayloadSchema`], and the [`ArtifactCache`] of precompiled
//! components.

mod cache;
mod loader;
mod manifest;
mod schema;

pub use cache::*;
pub use loader::*;
pub use manifest::*;
pub use schema::*;
