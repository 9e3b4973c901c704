#![no_std]
// Exists so that the package has a library target (cargo metadata, build-dependency).
