//! Field offsets of kernel structures, read from the running kernel's BTF
//! (/sys/kernel/btf/vmlinux), so the connect hooks can follow
//! `current->mm->exe_file->f_inode` and `current->nsproxy->mnt_ns` with plain
//! `bpf_probe_read_kernel` calls: the executable a task runs, identified by the kernel
//! at connect time (device and inode), and its mount namespace.
//!
//! aya 0.14 parses BTF but keeps struct members private, and the kernel programs are
//! built without CO-RE relocations; this reads just the few members needed. Any member
//! not found leaves the offsets invalid, and the executable is then "unknown".

use pam_common::TaskOffsets;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

struct Type {
    kind: u32,
    name_off: u32,
    kind_flag: bool,
    /// The size/type word: for modifiers and typedefs, the type they qualify.
    size_type: u32,
    /// (name offset, type id, bit offset) of each member, for structs and unions.
    members: Vec<(u32, u32, u32)>,
}

struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    fn parse(data: &[u8]) -> Option<Btf> {
        if u16::from_le_bytes(data.get(0..2)?.try_into().ok()?) != BTF_MAGIC {
            return None;
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_data = data.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            kind_flag: false,
            size_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at + 12 <= types_data.len() {
            let name_off = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let size_type = u32_at(types_data, at + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4,             // int, var, decl_tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => vlen * 12, // struct, union, datasec, enum64
                6 | 13 => vlen * 8,           // enum, func_proto
                _ => 0,
            };
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for m in 0..vlen {
                    let base = at + m * 12;
                    members.push((
                        u32_at(types_data, base)?,
                        u32_at(types_data, base + 4)?,
                        u32_at(types_data, base + 8)?,
                    ));
                }
            }
            at += extra;
            types.push(Type {
                kind,
                name_off,
                kind_flag: info >> 31 == 1,
                size_type,
                members,
            });
        }
        Some(Btf { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn struct_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT
                    && !t.members.is_empty()
                    && self.name(t.name_off) == name.as_bytes()
            })
            .map(|i| i as u32)
    }

    /// Byte offset of `member` in struct `id`, looking into anonymous structs/unions.
    fn member_offset(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        let t = self.types.get(id as usize)?;
        for &(name_off, ty, offset) in &t.members {
            let bits = if t.kind_flag {
                offset & 0xff_ffff
            } else {
                offset
            };
            if self.name(name_off) == member.as_bytes() {
                return (bits % 8 == 0).then_some(bits / 8);
            }
            if name_off == 0 && depth < 4 {
                let inner = self.skip_modifiers(ty);
                if let Some(o) = self.member_offset(inner, member, depth + 1) {
                    return Some(bits / 8 + o);
                }
            }
        }
        None
    }

    /// Follows typedef/volatile/const/restrict/type_tag to the type they qualify.
    fn skip_modifiers(&self, mut id: u32) -> u32 {
        for _ in 0..8 {
            match self.types.get(id as usize) {
                Some(t) if matches!(t.kind, 8..=11 | 18) => id = t.size_type,
                _ => break,
            }
        }
        id
    }

    fn offset(&self, strukt: &str, member: &str) -> Option<u32> {
        self.member_offset(self.struct_id(strukt)?, member, 0)
    }
}

/// The offsets for this kernel, or an invalid set when they cannot all be found.
pub fn task_offsets() -> TaskOffsets {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux")
        .ok()
        .and_then(|data| Btf::parse(&data));
    let mptcp = btf.as_ref().and_then(|btf| {
        Some((
            btf.offset("mptcp_sock", "first")?,
            btf.offset("sock_common", "skc_cookie")?,
        ))
    });
    // Kernels built without CONFIG_AUDIT have no login uid: recorded as unset.
    let task_loginuid = btf
        .as_ref()
        .and_then(|btf| btf.offset("task_struct", "loginuid"))
        .unwrap_or(0);
    let found = btf.and_then(|btf| {
        Some(TaskOffsets {
            task_mm: btf.offset("task_struct", "mm")?,
            mm_exe_file: btf.offset("mm_struct", "exe_file")?,
            file_inode: btf.offset("file", "f_inode")?,
            inode_ino: btf.offset("inode", "i_ino")?,
            inode_sb: btf.offset("inode", "i_sb")?,
            sb_dev: btf.offset("super_block", "s_dev")?,
            task_nsproxy: btf.offset("task_struct", "nsproxy")?,
            nsproxy_mnt_ns: btf.offset("nsproxy", "mnt_ns")?,
            mnt_ns_inum: btf.offset("mnt_namespace", "ns")? + btf.offset("ns_common", "inum")?,
            valid: 1,
            mptcp_first: mptcp.map_or(0, |m| m.0),
            sk_cookie: mptcp.map_or(0, |m| m.1),
            mptcp_valid: u32::from(mptcp.is_some()),
            task_loginuid,
        })
    });
    found.unwrap_or_else(|| {
        tracing::warn!(
            "kernel BTF lacks a field the executable check needs: executables are recorded as unknown"
        );
        TaskOffsets {
            task_loginuid,
            ..TaskOffsets::default()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_task_offsets_of_this_kernel() {
        let o = task_offsets();
        assert_eq!(o.valid, 1, "{o:?}");
        assert!(
            o.mm_exe_file > 0 && o.task_mm > 0 && o.inode_ino > 0,
            "{o:?}"
        );
        assert!(o.task_loginuid > 0, "this kernel has CONFIG_AUDIT: {o:?}");
    }
}
