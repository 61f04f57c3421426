//! How a wasmtime error is told: its root cause, or its whole chain on one line.

/// The root cause of a call's error, without the wasm backtrace wasmtime wraps it in.
pub fn root_cause(error: &wasmtime::Error) -> String {
    error
        .chain()
        .last()
        .map_or_else(|| error.to_string(), ToString::to_string)
}

/// The error and its causes on one line.
pub fn error_chain(error: &wasmtime::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    text
}
