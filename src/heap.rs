//! The allocator's settings for a training process. A training step allocates and frees
//! hundreds of activation and gradient buffers of 1–32 MB. glibc maps each one anew with
//! `mmap` and unmaps it on free, so every step paid for zeroing fresh pages and for the
//! TLB shootdowns of `munmap` (a quarter of its CPU time was in the kernel). Raising the
//! mmap threshold to glibc's maximum and never trimming the heap keeps freed buffers for
//! the next step instead.

/// Keeps freed buffers of up to 32 MB in the heap for reuse, for the rest of the process.
/// Only for processes that train: their heap stays at its high-water mark.
pub fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's largest accepted threshold on 64-bit (HEAP_MAX_SIZE / 2).
        const MMAP_THRESHOLD: libc::c_int = 32 * 1024 * 1024;
        // SAFETY: mallopt only changes allocator tunables; it is called before the
        // training threads allocate, and any value is safe for glibc to hold.
        let applied = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        };
        if !applied {
            tracing::warn!(
                "glibc refused the allocator settings for training; steps will be slower"
            );
        }
    }
}
