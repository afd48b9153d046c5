//! Loopback fakes of the chat platforms, speaking their documented protocols.
#![allow(dead_code)] // each test binary uses part of these fakes

pub mod discord;
pub mod telegram;
