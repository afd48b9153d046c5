//! Writing tensors as safetensors the way PyTorch tools expect (`{"format": "pt"}` in the
//! header; candle's own writer leaves it out and `transformers` then refuses the file), and
//! atomically.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use safetensors::tensor::{Dtype, TensorView};

use crate::{Error, Result, fsio};

/// Writes `tensors` (f32 or u32) to `path` atomically, with PyTorch's format marker.
pub fn save(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let (dtype, bytes) = match tensor.dtype() {
            DType::F32 => (
                Dtype::F32,
                bytes_of(tensor.flatten_all()?.to_vec1::<f32>()?),
            ),
            DType::U32 => (
                Dtype::U32,
                bytes_of(tensor.flatten_all()?.to_vec1::<u32>()?),
            ),
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!("cannot save tensor `{name}` of type {other:?}"),
                    "convert it to f32 first (a bug: report it)",
                ));
            }
        };
        raw.push((name.clone(), dtype, tensor.dims().to_vec(), bytes));
    }
    let views = raw
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::checkpoint(
                path,
                format!("cannot lay out the tensors: {e}"),
                "report it: a bug",
            )
        })?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| {
        Error::checkpoint(
            path,
            format!("cannot serialize the tensors: {e}"),
            "report it: a bug",
        )
    })?;
    fsio::write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
}

fn bytes_of<T: Copy + ToLeBytes>(values: Vec<T>) -> Vec<u8> {
    values.into_iter().flat_map(ToLeBytes::le).collect()
}

/// Little-endian bytes of the element types mananera saves.
trait ToLeBytes {
    fn le(self) -> [u8; 4];
}

impl ToLeBytes for f32 {
    fn le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl ToLeBytes for u32 {
    fn le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

/// Reads every tensor of a safetensors file written by [`save`] (or by PyTorch).
pub fn load(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
        Error::checkpoint(
            path,
            format!("not a readable safetensors file ({e})"),
            "the file is truncated or corrupt: train or download it again",
        )
    })
}
