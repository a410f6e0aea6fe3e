//! Placeholder until its issue lands; see the project README.
