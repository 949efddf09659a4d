// A minimal whatsapp-web.js bot for `sessionkeeper exec -- node index.js`.
//
// sessionkeeper takes the session's lease, restores the profile from PostgreSQL into
// SESSIONKEEPER_PROFILE_DIR, starts this bot, snapshots the folder while it runs, passes
// SIGTERM on at a deploy and takes the final snapshot once the bot has exited. LocalAuth keeps
// its Chromium profile in `<dataPath>/session` (or `<dataPath>/session-<clientId>`), so point
// SESSIONKEEPER_PROFILE_DIR at that folder: dataPath and clientId are read back from it here.
'use strict';

const path = require('path');
const qrcode = require('qrcode-terminal');
const { Client, LocalAuth } = require('whatsapp-web.js');

const profile = process.env.SESSIONKEEPER_PROFILE_DIR;
if (!profile) {
    console.error('run me with: sessionkeeper exec -- node index.js');
    process.exit(2);
}
const folder = path.basename(profile).match(/^session(?:-([-\w]+))?$/);
if (!folder) {
    console.error(`SESSIONKEEPER_PROFILE_DIR must end in /session or /session-<clientId>, not ${profile}`);
    process.exit(2);
}

const client = new Client({
    authStrategy: new LocalAuth({ dataPath: path.dirname(profile), clientId: folder[1] }),
    puppeteer: {
        headless: true,
        // The image's Chromium (see the Dockerfile); unset: Puppeteer's own.
        executablePath: process.env.PUPPETEER_EXECUTABLE_PATH || undefined,
        args: ['--no-sandbox', '--disable-dev-shm-usage'],
    },
});

// Only on the first start, or after the phone unlinked this device: scan it from
// WhatsApp -> Settings -> Linked devices -> Link a device.
client.on('qr', (qr) => qrcode.generate(qr, { small: true }));
client.on('ready', () => console.log(JSON.stringify({ bot: 'ready' })));
client.on('disconnected', (reason) => console.log(JSON.stringify({ bot: 'disconnected', reason })));

client.on('message', async (message) => {
    if (message.body === '!ping') {
        await message.reply('pong');
    }
});

// sessionkeeper passes SIGTERM (a deploy) or SIGINT (Ctrl-C) on to the bot. Closing the browser
// makes Chromium write what it still holds (localStorage, cookies) before the final snapshot.
let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, async () => {
        if (stopping) return;
        stopping = true;
        try {
            await client.destroy();
        } finally {
            process.exit(0);
        }
    });
}

client.initialize();
