//! The console's HTML, rendered on the server with maud: no JavaScript, no asset
//! from outside the binary.

pub(crate) mod dead_letters;
pub(crate) mod home;
pub(crate) mod layout;
pub(crate) mod other;
pub(crate) mod saga;
