//! In place: the file mapping itself is registered, either with `IBV_ACCESS_ON_DEMAND`
//! (ODP: nothing is pinned, the device faults pages in) or as a plain MR (pinned: the
//! kernel pins the pages; the lease keeps the file from changing under them).

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use super::BuildError;
use crate::region::config::Access;
use crate::sys::{AddressReservation, Mapping};
use crate::verbs::{Access as MrAccess, MemoryRegion, ProtectionDomain};

#[allow(clippy::too_many_arguments)] // the registration's whole description, as `build`'s
pub(super) fn build(
    pd: &Arc<ProtectionDomain>,
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    access: Access,
    on_demand: bool,
    iova: Option<u64>,
    reserved: Option<AddressReservation>,
) -> Result<(MemoryRegion, Arc<Mapping>), BuildError> {
    let prot = access.protection();
    let map = match (iova, reserved) {
        // rxe translates an ODP MR's addresses against its mapping's own: a rebuilt ODP
        // region must be mapped where its predecessor was, and registered there: into
        // the placeholder that held those addresses since the revocation, or, without
        // one, there if nothing else took them.
        (Some(_), Some(held)) if on_demand => Mapping::file_in(held, fd, offset, len, prot),
        (Some(at), _) if on_demand => Mapping::file_at(fd, offset, len, prot, at),
        _ => Mapping::file(fd, offset, len, prot),
    };
    let map = Arc::new(map.map_err(BuildError::Map)?);
    let mut mr_access = access.mr_access();
    if on_demand {
        mr_access |= MrAccess::ON_DEMAND;
    }
    let iova = if on_demand { None } else { iova };
    let mr = super::register(pd, &map, mr_access, iova)?;
    Ok((mr, map))
}
