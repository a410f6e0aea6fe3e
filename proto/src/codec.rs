//! A protobuf codec with small initial buffers, for services whose messages
//! are small and whose streams are many (grpc.lb.v1: a balancer holds one
//! stream per client). tonic's default allocates 8 KiB per direction per
//! stream up front; this starts at 512 bytes and grows when a message needs
//! it.
//!
//! ```
//! use tonic::codec::Codec;
//! let mut codec = waypost_proto::codec::SmallMessageCodec::<(), ()>::default();
//! # let _ = &mut codec;
//! ```

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The initial buffer size.
pub const INITIAL_BUFFER: usize = 512;
/// How much is buffered before tonic yields (its default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// A prost codec with [`INITIAL_BUFFER`]-byte initial buffers.
#[derive(Debug)]
pub struct SmallMessageCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for SmallMessageCodec<T, U> {
    fn default() -> Self {
        SmallMessageCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallMessageCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
