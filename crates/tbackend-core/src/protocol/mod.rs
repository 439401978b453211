//! The wire: frames, request bodies and what the answers mean. No I/O.

pub mod answer;
pub mod frame;
pub mod request;
pub mod tree;

pub use answer::{classify, AnswerError, Classified, ErrorKind, Flags, OpKind, Status};
pub use frame::{Decoder, FrameError};
pub use request::{RequestBuilder, RequestError};
pub use tree::Json;
