//! A worker and a sender in one process on the memory broker and backend: no server needed.
//!
//! `cargo run -p quickstart`

use std::time::Duration;

use machinery::{
    Chain, Chord, Config, Group, MemoryBackend, MemoryBroker, Server, Signature, Variadic,
};

/// A task is a plain async function with typed parameters.
async fn add(Variadic(numbers): Variadic<i64>) -> Result<i64, String> {
    Ok(numbers.iter().sum())
}

async fn multiply(Variadic(numbers): Variadic<i64>) -> Result<i64, String> {
    Ok(numbers.iter().product())
}

async fn greet(name: String) -> Result<String, String> {
    if name.is_empty() {
        return Err("nobody to greet".to_owned());
    }
    Ok(format!("hello, {name}"))
}

#[tokio::main]
async fn main() -> machinery::Result<()> {
    let server = Server::new(Config::default(), MemoryBroker::new(), MemoryBackend::new());
    server.register_task("add", add)?;
    server.register_task("multiply", multiply)?;
    server.register_task("greet", greet)?;

    let worker = server.new_worker("quickstart", 4).launch();
    let wait = Duration::from_secs(10);

    let sum: i64 = server
        .send_task(Signature::new("add").arg(1i64).arg(2i64))
        .await?
        .get_as(wait)
        .await?;
    println!("add(1, 2) = {sum}");

    let hello: String = server
        .send_task(Signature::new("greet").arg("machinery"))
        .await?
        .get_as(wait)
        .await?;
    println!("greet(\"machinery\") = {hello:?}");

    let failed = server
        .send_task(Signature::new("greet").arg(""))
        .await?
        .get_as::<String>(wait)
        .await;
    println!("greet(\"\") = {failed:?}");

    let add_pair = |a: i64, b: i64| Signature::new("add").arg(a).arg(b);
    let chord = Chord::new(
        Group::new(vec![add_pair(1, 1), add_pair(2, 2), add_pair(5, 6)]),
        Signature::new("multiply"),
    );
    let product: i64 = server.send_chord(chord, 0).await?.get_as(wait).await?;
    println!("chord [add(1,1), add(2,2), add(5,6)] -> multiply = {product}");

    let chain = Chain::new(vec![
        add_pair(2, 2),
        add_pair(5, 6),
        Signature::new("multiply").arg(4i64),
    ])?;
    let last: i64 = server.send_chain(chain).await?.get_as(wait).await?;
    println!("chain add(2,2) -> add(5,6) -> multiply(4) = {last}");

    worker.quit();
    worker.join().await
}
