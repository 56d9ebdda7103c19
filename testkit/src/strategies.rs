//! proptest strategies (being written)
