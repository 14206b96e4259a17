// The contract between the image store (images.ts) and its users (the VM agent, REST routes): content-addressed
// base images by hex SHA-256, qcow2 overlays for VM disks, and fetching an image a node lacks from its peers.

/** An image this node holds in <dataDir>/images. */
export interface LocalImage {
  /** Hex SHA-256 of the content. */
  id: string;
  name: string;
  sizeBytes: number;
  /** qcow2, raw, or `kernel`/`initrd` for boot files (what `qemu-img info` or the importer said). */
  format: string;
  path: string;
}

export interface ImageProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface ImageSource {
  /** The local path of image `id`, fetching it from a peer that holds it (hash verified) when this node lacks it. */
  ensure(id: string, onProgress?: (p: ImageProgress) => void): Promise<LocalImage>;
  /**
   * Creates a qcow2 disk at `destPath`: an overlay over base image `baseId` (grown to `sizeGiB` if larger than the
   * base), or a blank disk of `sizeGiB` when `baseId` is null.
   */
  createDisk(destPath: string, baseId: string | null, sizeGiB: number): Promise<void>;
}
