//! `enforcer suggest`: placeholder replaced below.
