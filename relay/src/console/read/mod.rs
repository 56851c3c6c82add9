//! What the console reads from the service databases. Every query here is read-only
//! and bounded; `docs/guide/console.md` names the index each one uses.

pub(crate) mod home;
mod missing;
pub(crate) mod position;
pub(crate) mod records;
pub(crate) mod search;
pub(crate) mod stuck;
pub(crate) mod timeline;
pub(crate) mod trace;

pub(crate) use missing::is_missing_table;
