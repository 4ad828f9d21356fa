//! Real web servers (Apache, nginx, fcgiwrap, spawn-fcgi) started on loopback for the tests (filled in by the web-server work).
