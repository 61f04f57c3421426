//! A plain WASI command: a component, but of the wrong world (no `handler` export).
fn main() {
    println!("I am not a job handler");
}
