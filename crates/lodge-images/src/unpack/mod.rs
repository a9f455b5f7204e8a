//! Applies image layers to a directory tree, in order, the way docker does,
//! without ever letting a layer write outside that tree.
//!
//! Every file-system call is relative to a directory file descriptor and
//! passes `O_NOFOLLOW`: the kernel never follows a symlink on our behalf.
//! Parent directories are walked one component at a time from the root; when
//! a component is a symlink left by an earlier entry, its target is resolved
//! here, inside the tree (an absolute target starts again at the image root,
//! as it would inside the guest). An entry whose name is absolute or holds a
//! `..`, and a walk that a relative symlink would take above the root, are
//! refused: the layer fails and the caller discards the whole tree.
//!
//! OCI whiteouts are honoured: `.wh.NAME` deletes `NAME` from the layers
//! below, `.wh..wh..opq` empties its directory of everything the layers below
//! put there. Modes (with setuid/setgid/sticky), owners, mtimes, extended
//! attributes, symlinks, hard links, FIFOs and device nodes are kept. Without
//! root, owners and device nodes cannot be made: owners are left as the
//! caller's and device nodes are skipped with a warning.
//!
//! One file per concern, imported leaf-first: [`apply`] writes entries,
//! [`whiteout`] interprets `.wh.` entries and opaque directories, [`meta`]
//! reads an entry's metadata, [`fsops`] holds the descriptor-relative
//! primitives, [`decompress`] sniffs the compression, [`error`] the errors.

mod apply;
mod decompress;
mod error;
mod fsops;
mod meta;
mod whiteout;

pub use apply::{unpack_layers, LayerStats, Unpacker};
pub use decompress::decompress;
pub use error::UnpackError;
pub use fsops::{remove_all_at, remove_tree};
