# Multi-stage: build with the full toolchain, run on a slim image with just the binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin emporium && cp target/release/emporium /emporium

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/emporium --create-home emporium
COPY --from=build /emporium /usr/local/bin/emporium
USER emporium
WORKDIR /var/lib/emporium
ENV LISTEN=0.0.0.0:8000 \
    DATA_DIR=/var/lib/emporium \
    LOG_FORMAT=json
EXPOSE 8000
ENTRYPOINT ["emporium"]
CMD ["serve"]
