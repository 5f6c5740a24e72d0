//! The deployment manifest (placeholder until the manifest module lands).
