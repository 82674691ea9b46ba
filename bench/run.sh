#!/usr/bin/env bash
# The sp-broker benchmark (see BENCHMARKS.md): builds the release binaries with
# the `bench` feature, then runs sp-broker-bench, which seeds the database
# `sp_broker_bench` (dropped and recreated) on the PostgreSQL at
# BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/sp_broker_bench),
# starts target/release/sp-broker and measures /healthz, cache-hit access tokens
# and access tokens served from PostgreSQL after a restart.
#
# Usage: bench/run.sh [sp-broker-bench options, e.g. --seconds 20]; --help lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features bench --bins
exec target/release/sp-broker-bench "$@"
