//! FastCGI responder (filled in by the FastCGI work).
