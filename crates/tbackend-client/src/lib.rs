//! The native TBackend client (work in progress).
