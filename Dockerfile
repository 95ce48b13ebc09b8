# shapesync server image: release build (pg_query needs libclang at build time), slim runtime.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang1-14 libclang-common-14-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin shapesync

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/shapesync /usr/local/bin/shapesync
ENV SHAPESYNC_LISTEN=0.0.0.0:3000 SHAPESYNC_STORAGE_DIR=/var/lib/shapesync
VOLUME /var/lib/shapesync
EXPOSE 3000
HEALTHCHECK CMD curl -fsS http://127.0.0.1:3000/v1/health | grep -q active
ENTRYPOINT ["shapesync", "serve"]
