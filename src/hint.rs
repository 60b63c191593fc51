//! A cache hint for code that is about to touch several unrelated cache lines: issuing all the
//! hints first lets the misses overlap instead of queueing one behind the other.

/// A prefetch hint for the line holding `p` (nothing on other targets, or for `None`).
#[inline]
pub fn prefetch<T>(p: Option<&T>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(p) = p {
        // SAFETY: a prefetch is a hint with no effect on memory; `p` is a valid reference
        #[allow(unused_unsafe)]
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast::<i8>());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
