//! raftkv node.
