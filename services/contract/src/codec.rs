//! The protobuf codec every generated stub uses: tonic's prost codec with small buffers.
//!
//! tonic's default gives every call an 8 KiB encode buffer and an 8 KiB decode buffer that
//! live as long as the call. For a long-lived stream (an attached terminal, tens of thousands
//! per node) that buffer is most of what the stream costs, while a push is a few hundred
//! bytes; the buffers start at 1 KiB here and grow when a larger message needs it.
//!
//! A body that does not decode is the caller's mistake: it answers `INVALID_ARGUMENT` naming
//! the expected message (prost's codec answers `INTERNAL`, which says the server failed).
//!
//! ```
//! use mesh_contract::codec::MeshCodec;
//! use tonic::codec::Codec;
//!
//! let mut codec = MeshCodec::<(), ()>::default();
//! let _ = (codec.encoder(), codec.decoder());
//! ```

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a call's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;
/// A streaming call's encoded messages are flushed once this much is buffered.
pub const YIELD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_BYTES`] buffers; named in codegen's `codec_path`.
#[derive(Debug, Clone)]
pub struct MeshCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for MeshCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

impl<T, U> Codec for MeshCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MeshDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        MeshDecoder(ProstCodec::<T, U>::raw_decoder(settings()))
    }
}

/// prost's decoder, answering a body that does not decode with `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct MeshDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for MeshDecoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, tonic::Status> {
        self.0.decode(buf).map_err(|status| {
            if status.code() != tonic::Code::Internal {
                return status;
            }
            let name = std::any::type_name::<U>();
            let name = name.rsplit("::").next().unwrap_or(name);
            tonic::Status::invalid_argument(format!(
                "the body does not decode as a {name}: {}",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
