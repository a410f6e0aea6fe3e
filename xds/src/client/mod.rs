//! The XdsClient: one ADS stream per management server, shared by every
//! channel of the process. [`ads`] is its protocol, as a pure state
//! machine.

pub mod ads;
