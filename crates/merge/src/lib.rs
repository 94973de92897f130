//! merge engine (in progress)
