//! Stub; replaced by the demo work.
