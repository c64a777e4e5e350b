//! `polld-tests` holds the end-to-end tests of polld (in `tests/`): a real
//! `polld` binary run against wiremock and other servers on loopback. This
//! library holds the helpers those tests share.
