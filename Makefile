.PHONY: run test ci services services-stop bench fmt lint

run:            ## the quickstart on the memory drivers
	cargo run -p machinery-cli -- quickstart

test:           ## the test command (driver tests skip without their variables)
	cargo test --workspace

services:       ## start Redis and RabbitMQ on 127.0.0.1 (writes .services/env.sh)
	bash scripts/services.sh start

services-stop:  ## stop only what `make services` started
	bash scripts/services.sh stop

ci:             ## what CI runs
	bash .ci/run

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets --all-features -- -D warnings

bench:          ## end-to-end figures on Redis (see BENCHMARKS.md)
	cargo run --release -p machinery-cli -- bench all --broker redis://127.0.0.1:6379/ --backend redis://127.0.0.1:6379/
