//! The allocator's settings for a training process. A training step allocates and frees
//! hundreds of activation and gradient buffers of 1–32 MB, and a full fine-tune a few of a
//! GB (the tied embeddings' gradients). glibc maps each one anew with `mmap` and unmaps it
//! on free, so every step paid for the kernel zeroing fresh pages and for the TLB
//! shootdowns of `munmap`: a quarter of a LoRA step's CPU time and almost half of a full
//! one's. For training processes only ([`reuse_freed_buffers`]):
//!
//! - glibc's mmap threshold goes to its maximum (32 MB) and the heap is never trimmed, so
//!   freed buffers below it stay in the heap for the next step;
//! - [`StepAllocator`], the binary's global allocator, keeps freed blocks of 32 MB and more
//!   and hands each back for the next allocation of exactly its size: a step allocates the
//!   same sizes as the last one.
//!
//! Every other process (the daemon, the bots, the CLI) allocates straight from glibc.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Keeps freed buffers for reuse for the rest of the process. Only for processes that
/// train: their memory stays at its high-water mark.
pub fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tunables; any value is safe for glibc to
        // hold, and it refuses (returns 0) the ones it does not accept.
        let applied = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, BIG as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        };
        if !applied {
            tracing::warn!(
                "glibc refused the allocator settings for training; steps will be slower"
            );
        }
    }
    REUSE.store(true, Ordering::Release);
}

/// From this size on, blocks are mapped by glibc one by one (its largest mmap threshold on
/// 64-bit) and kept by [`StepAllocator`] when freed.
const BIG: usize = 32 * 1024 * 1024;

/// How many freed big blocks are kept at most; the oldest is released for a newer one.
const SLOTS: usize = 16;

static REUSE: AtomicBool = AtomicBool::new(false);

/// Freed big blocks: `(address, size, align)`, 0 for an empty slot, oldest first.
static FREED: Mutex<[(usize, usize, usize); SLOTS]> = Mutex::new([(0, 0, 0); SLOTS]);

/// The system allocator, keeping freed blocks of [`BIG`] bytes and more for reuse once
/// [`reuse_freed_buffers`] has been called.
pub struct StepAllocator;

impl StepAllocator {
    /// A kept block of exactly `layout`, taken out of the cache.
    fn take(layout: Layout) -> Option<*mut u8> {
        if layout.size() < BIG || !REUSE.load(Ordering::Acquire) {
            return None;
        }
        let mut freed = FREED.lock().unwrap_or_else(|p| p.into_inner());
        let slot = freed.iter_mut().find(|(addr, size, align)| {
            *addr != 0 && *size == layout.size() && *align == layout.align()
        })?;
        let addr = std::mem::take(slot).0;
        Some(addr as *mut u8)
    }

    /// Keeps `ptr` for reuse; gives back the block that must be released instead (the
    /// oldest kept one when every slot is taken), or `ptr` itself when reuse is off.
    fn keep(ptr: *mut u8, layout: Layout) -> Option<(*mut u8, Layout)> {
        if layout.size() < BIG || !REUSE.load(Ordering::Acquire) {
            return Some((ptr, layout));
        }
        let mut freed = FREED.lock().unwrap_or_else(|p| p.into_inner());
        let evicted = match freed.iter().position(|&(addr, _, _)| addr == 0) {
            Some(empty) => {
                freed[empty..].rotate_left(1);
                None
            }
            None => {
                let (addr, size, align) = freed[0];
                freed.rotate_left(1);
                // SAFETY: every kept block came from a valid layout of this allocator.
                Some((addr as *mut u8, unsafe {
                    Layout::from_size_align_unchecked(size, align)
                }))
            }
        };
        freed[SLOTS - 1] = (ptr as usize, layout.size(), layout.align());
        evicted
    }
}

// SAFETY: every block handed out is one `System` allocated for the same size and alignment
// (kept blocks are only reused for an identical layout, and zeroed when asked for zeroed
// memory), and every block is released to `System` exactly once: either when freed, or when
// evicted from the cache.
unsafe impl GlobalAlloc for StepAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::take(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's layout contract is passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some((ptr, layout)) = Self::keep(ptr, layout) {
            // SAFETY: `ptr` was allocated by `System` with `layout` (the caller's block, or
            // an evicted kept one with its own layout).
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: every live block is a `System` block of `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_big_block_is_reused_zeroed_and_small_ones_pass_through() {
        REUSE.store(true, Ordering::Release);
        let allocator = StepAllocator;
        let big = Layout::from_size_align(BIG + 4096, 64).unwrap();
        // SAFETY: layouts are non-zero; every block is freed once with its layout.
        unsafe {
            let first = allocator.alloc(big);
            first.write_bytes(7, big.size());
            allocator.dealloc(first, big);
            let again = allocator.alloc_zeroed(big);
            assert_eq!(again, first, "the freed block was not reused");
            assert!(
                std::slice::from_raw_parts(again, big.size())
                    .iter()
                    .all(|&b| b == 0)
            );
            // Another size does not get it.
            let other = Layout::from_size_align(BIG + 8192, 64).unwrap();
            allocator.dealloc(again, big);
            let third = allocator.alloc(other);
            assert_ne!(third, first);
            allocator.dealloc(third, other);
            // More frees than slots release the oldest blocks instead of growing.
            let blocks: Vec<_> = (0..SLOTS + 3).map(|_| allocator.alloc(big)).collect();
            for &block in &blocks {
                allocator.dealloc(block, big);
            }
            let kept = FREED
                .lock()
                .unwrap()
                .iter()
                .filter(|&&(addr, _, _)| addr != 0)
                .count();
            assert_eq!(kept, SLOTS);
            let small = Layout::from_size_align(1024, 8).unwrap();
            let block = allocator.alloc(small);
            allocator.dealloc(block, small);
            assert!(
                FREED
                    .lock()
                    .unwrap()
                    .iter()
                    .all(|&(addr, _, _)| addr != block as usize)
            );
        }
    }
}
