# notirouter in a small image, running as a non-root user.
#   docker build -t notirouter .
#   docker run -p 8080:8080 -v notirouter-data:/var/lib/notirouter notirouter
# The store, mail and chat files live in /var/lib/notirouter (the working directory).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The release profile strips the binary (see Cargo.toml; `--profile profiling` keeps symbols).
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/notirouter --create-home notirouter
COPY --from=build /src/target/release/notirouter /usr/local/bin/notirouter
COPY config/notirouter.toml /etc/notirouter/notirouter.toml
COPY scripts /etc/notirouter/scripts
USER notirouter
WORKDIR /var/lib/notirouter
ENV NOTIROUTER_CONFIG=/etc/notirouter/notirouter.toml \
    NOTIROUTER__SERVER__LISTEN=0.0.0.0:8080 \
    NOTIROUTER__SCRIPTS__DIR=/etc/notirouter/scripts
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["notirouter"]
CMD ["serve"]
