// The demo guest as cluster images: its kernel, initrd and data disk are imported into the image store (so any
// node can fetch them by hash) and a VM spec that boots it from those image ids is returned. `vm create --demo`
// and `make demo` use this.
import type { VmSpec } from '../../consensus/cluster/commands.js';
import { ensureDemoGuest, type DemoGuestOptions } from './demo-guest.js';

/** The demo guest's data disk as the VM sees it (an overlay over the small base image, grown to this size). */
export const demoDataDiskGiB = 1;
export const demoVcpus = 1;

/** What the import needs from the image store: add a local file as a content-addressed image of the cluster. */
export interface ImageImporter {
  importFile(path: string, options: { name: string; format: 'kernel' | 'initrd' | 'qcow2' }): Promise<{ id: string }>;
}

export interface DemoGuestImport {
  spec: VmSpec;
  images: { kernel: string; initrd: string; dataDisk: string };
  kernelVersion: string;
}

export async function importDemoGuest(images: ImageImporter, options: DemoGuestOptions = {}): Promise<DemoGuestImport> {
  const guest = await ensureDemoGuest(options);
  const version = guest.manifest.kernelVersion;
  // One at a time: imports hash and copy files, and this machine may be busy booting guests.
  const kernel = await images.importFile(guest.kernel, { name: `demo-guest-vmlinuz-${version}`, format: 'kernel' });
  const initrd = await images.importFile(guest.initrd, { name: `demo-guest-initrd-${version}`, format: 'initrd' });
  const dataDisk = await images.importFile(guest.dataDisk, { name: 'demo-guest-data.qcow2', format: 'qcow2' });
  return {
    spec: {
      vcpus: demoVcpus,
      memoryMiB: guest.memoryMiB,
      disks: [{ imageId: dataDisk.id, sizeGiB: demoDataDiskGiB }],
      nics: [{ model: 'virtio-net-pci' }],
      kernel: kernel.id,
      initrd: initrd.id,
      cmdline: guest.cmdline,
    },
    images: { kernel: kernel.id, initrd: initrd.id, dataDisk: dataDisk.id },
    kernelVersion: version,
  };
}
