// @ts-check
// Images and downloads need the token, so <img src> cannot fetch them: they are fetched here and
// shown from object URLs, which each view revokes when it is left.

import { request } from "./api.js";

/** Object URLs of files fetched with the token; one fetch per URL, revoked when no longer shown. */
export class BlobCache {
  constructor() {
    /** @type {Map<string, Promise<string>>} */
    this.urls = new Map();
  }

  /** The object URL of `url`'s file, fetched once. */
  get(/** @type {string} */ url, /** @type {AbortSignal} */ signal) {
    let objectUrl = this.urls.get(url);
    if (!objectUrl) {
      objectUrl = request(url, { signal }).then((response) => response.blob()).then(URL.createObjectURL);
      objectUrl.catch(() => this.urls.delete(url));
      this.urls.set(url, objectUrl);
    }
    return objectUrl;
  }

  revoke(/** @type {string} */ url) {
    const objectUrl = this.urls.get(url);
    if (!objectUrl) return;
    objectUrl.then(URL.revokeObjectURL, () => {});
    this.urls.delete(url);
  }

  clear() {
    for (const url of [...this.urls.keys()]) this.revoke(url);
  }
}

/** Show `url`'s image in `img` once it has been fetched with the token. */
export function showImage(
  /** @type {HTMLImageElement} */ img, /** @type {string} */ url, /** @type {import("./router.js").View} */ current,
) {
  current.blobs.get(url, current.signal).then(
    (objectUrl) => {
      img.src = objectUrl;
    },
    () => {
      img.alt = `${img.alt} (could not be loaded)`;
    },
  );
}
